//! Constant tc programs (`r0 = ACTION; exit`) loaded by the bench itself with the bpf(2)
//! syscall and hooked as clsact direct-action filters:
//!
//! - the floor: `TC_ACT_UNSPEC` on a tap's ingress and egress, hooked the way tapwatch
//!   hooks its probe: what any per-frame tc hook costs before it does anything;
//! - the sink of the healthy-traffic benchmark: `TC_ACT_STOLEN` on the egress of the
//!   device the host forwards to, which consumes the frame (a consume, not a drop: no
//!   drop tracepoint fires), without a reader thread sharing the CPUs.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use anyhow::{bail, Context as _, Result};
use diag_user::lab::netns::{run as sh, Netns};

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;

#[repr(C)]
struct Insn {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

/// The leading fields of `union bpf_attr` for BPF_PROG_LOAD (the rest stay zero).
#[repr(C)]
#[derive(Default)]
struct ProgLoad {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    _rest: [u64; 8],
}

#[repr(C)]
#[derive(Default)]
struct ObjPin {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
    _rest: [u8; 16],
}

/// A bpffs mounted on a directory of the bench's own, unmounted and removed on drop.
struct BpfFs {
    dir: std::path::PathBuf,
}

impl BpfFs {
    fn mount() -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("twbench-bpffs-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        sh("mount", &["-t", "bpf", "bpf", &dir.to_string_lossy()])
            .context("mounting a bpffs for the bench's programs")?;
        Ok(Self { dir })
    }
}

impl Drop for BpfFs {
    fn drop(&mut self) {
        let _ = sh("umount", &[&self.dir.to_string_lossy()]);
        let _ = std::fs::remove_dir(&self.dir);
    }
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> std::io::Result<i32> {
    // SAFETY: bpf(2) with an attribute struct of the size given, zero beyond its fields.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T,
            std::mem::size_of::<T>() as u32,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(r as i32)
}

/// Loads `r0 = action; exit` as a tc program called `name` (cut to the kernel's 15
/// characters).
fn load_constant(name: &str, action: i32) -> Result<OwnedFd> {
    let insns = [
        // r0 = action
        Insn {
            code: 0xb7,
            regs: 0,
            off: 0,
            imm: action,
        },
        // exit
        Insn {
            code: 0x95,
            regs: 0,
            off: 0,
            imm: 0,
        },
    ];
    let license = b"GPL\0";
    let mut prog_name = [0u8; 16];
    let n = name.len().min(15);
    prog_name[..n].copy_from_slice(&name.as_bytes()[..n]);
    let mut load = ProgLoad {
        prog_type: BPF_PROG_TYPE_SCHED_CLS,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        prog_name,
        ..ProgLoad::default()
    };
    let fd = bpf(BPF_PROG_LOAD, &mut load).context("loading the empty program")?;
    // SAFETY: a fresh descriptor from the kernel.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The floor program's name, as the kernel lists it.
pub const FLOOR_NAME: &str = "bench_floor";

/// `TC_ACT_UNSPEC`: go on.
pub const GO_ON: i32 = -1;
/// `TC_ACT_STOLEN`: the program took the frame (the kernel consumes it).
pub const STOLEN: i32 = 4;

/// A constant program on one interface; removed (with its clsact qdisc) on `stop`.
pub struct EmptyProgram {
    ns_name: String,
    ifname: String,
}

impl EmptyProgram {
    /// The floor: `TC_ACT_UNSPEC` on ingress and egress.
    pub fn attach(ns: &Netns, ifname: &str) -> Result<Self> {
        Self::returning(ns, ifname, FLOOR_NAME, GO_ON, &["ingress", "egress"])
    }

    /// A program called `name` returning `action` on the hooks `dirs` of `ifname`.
    pub fn returning(
        ns: &Netns,
        ifname: &str,
        name: &str,
        action: i32,
        dirs: &[&str],
    ) -> Result<Self> {
        let fd = load_constant(name, action)?;
        // tc takes a pinned program: pinned in a bpffs of the bench's own (the host's may
        // not be mounted), unpinned once the filters hold the program.
        let fs = BpfFs::mount()?;
        let pin = fs.dir.join("prog").to_string_lossy().into_owned();
        let path = std::ffi::CString::new(pin.clone())?;
        let mut attr = ObjPin {
            pathname: path.as_ptr() as u64,
            bpf_fd: fd.as_raw_fd() as u32,
            ..ObjPin::default()
        };
        bpf(BPF_OBJ_PIN, &mut attr).context("pinning the program")?;
        let _ = ns.exec("tc", &["qdisc", "add", "dev", ifname, "clsact"]);
        let mut result = Ok(());
        for &dir in dirs {
            let r = ns.exec(
                "tc",
                &[
                    "filter",
                    "add",
                    "dev",
                    ifname,
                    dir,
                    "bpf",
                    "direct-action",
                    "object-pinned",
                    &pin,
                ],
            );
            if let Err(e) = r {
                result = Err(e);
            }
        }
        let _ = std::fs::remove_file(&pin);
        drop(fs);
        let p = Self {
            ns_name: ns.name().to_string(),
            ifname: ifname.to_string(),
        };
        if let Err(e) = result {
            p.stop()?;
            bail!("attaching the empty program: {e}");
        }
        Ok(p)
    }

    pub fn stop(self) -> Result<()> {
        // Removing the qdisc removes its filters.
        sh(
            "tc",
            &[
                "-n",
                &self.ns_name,
                "qdisc",
                "del",
                "dev",
                &self.ifname,
                "clsact",
            ],
        )?;
        Ok(())
    }
}
