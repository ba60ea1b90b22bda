//! libpcap, loaded when the libpcap datapath is first used, not linked.
//!
//! Linked, the binary names one soname (`libpcap.so.0.8` on Debian and Ubuntu) and does not
//! start at all where the library has another name (RHEL: `libpcap.so.1`) or is missing,
//! even for `--version` or `analyze`. Loaded here, only `--datapath pcap` (or `auto`
//! falling back to it) needs it, and it says what to install when it is not there. Only the
//! functions the datapath calls are looked up.

use std::{
    ffi::{c_char, c_int, CStr, CString},
    sync::OnceLock,
};

use libloading::Library;

/// The sonames tried, in order, unless `TAPWATCH_LIBPCAP` names the library (a path).
const SONAMES: [&str; 3] = ["libpcap.so.1", "libpcap.so.0.8", "libpcap.so"];
const ERRBUF_SIZE: usize = 256;
const TSTAMP_PRECISION_NANO: c_int = 1;
const D_IN: c_int = 1;
const D_OUT: c_int = 2;

/// `pcap_t`, opaque.
#[repr(C)]
struct RawPcap {
    _opaque: [u8; 0],
}

/// `struct pcap_pkthdr` on Linux (64-bit time_t targets: x86-64, arm64).
#[repr(C)]
#[derive(Clone, Copy)]
struct PktHdr {
    ts: libc::timeval,
    caplen: u32,
    len: u32,
}

macro_rules! api {
    ($($name:ident: fn($($arg:ty),*) -> $ret:ty;)*) => {
        /// The library's functions; valid while `_lib` is (for the process's life: the API
        /// lives in a static).
        struct Api {
            $($name: unsafe extern "C" fn($($arg),*) -> $ret,)*
            soname: String,
            _lib: Library,
        }
        impl Api {
            /// # Safety
            /// `lib` must be a libpcap: each symbol is taken to have libpcap's signature.
            unsafe fn bind(lib: Library, soname: String) -> Result<Self, String> {
                $(
                    // SAFETY: the caller vouches that this is libpcap, whose function of
                    // this name has this signature (pcap/pcap.h).
                    let $name = *unsafe {
                        lib.get::<unsafe extern "C" fn($($arg),*) -> $ret>(
                            concat!(stringify!($name), "\0").as_bytes(),
                        )
                    }
                    .map_err(|e| format!("{soname}: {e}"))?;
                )*
                Ok(Api { $($name,)* soname, _lib: lib })
            }
        }
    };
}

api! {
    pcap_create: fn(*const c_char, *mut c_char) -> *mut RawPcap;
    pcap_set_immediate_mode: fn(*mut RawPcap, c_int) -> c_int;
    pcap_set_timeout: fn(*mut RawPcap, c_int) -> c_int;
    pcap_set_snaplen: fn(*mut RawPcap, c_int) -> c_int;
    pcap_set_tstamp_precision: fn(*mut RawPcap, c_int) -> c_int;
    pcap_activate: fn(*mut RawPcap) -> c_int;
    pcap_setdirection: fn(*mut RawPcap, c_int) -> c_int;
    pcap_setnonblock: fn(*mut RawPcap, c_int, *mut c_char) -> c_int;
    pcap_next_ex: fn(*mut RawPcap, *mut *mut PktHdr, *mut *const u8) -> c_int;
    pcap_get_selectable_fd: fn(*mut RawPcap) -> c_int;
    pcap_geterr: fn(*mut RawPcap) -> *mut c_char;
    pcap_statustostr: fn(c_int) -> *const c_char;
    pcap_close: fn(*mut RawPcap) -> ();
    pcap_lib_version: fn() -> *const c_char;
}

static API: OnceLock<Result<Api, String>> = OnceLock::new();

fn api() -> Result<&'static Api, String> {
    API.get_or_init(|| {
        // The user's choice is the only one tried: a wrong path is said, not worked around.
        // Not in a privileged process (a binary given capabilities with setcap): the dynamic
        // loader ignores LD_* there, and so does this, or any user could run code with the
        // binary's capabilities.
        if let Some(path) = std::env::var_os("TAPWATCH_LIBPCAP") {
            // SAFETY: getauxval only reads the process's auxiliary vector.
            if unsafe { libc::getauxval(libc::AT_SECURE) } != 0 {
                return Err(
                    "TAPWATCH_LIBPCAP is ignored by a privileged (setcap or setuid) tapwatch; \
                     unset it to use the system's libpcap"
                        .to_string(),
                );
            }
            let shown = path.to_string_lossy().into_owned();
            // SAFETY: as below; the user named this library as libpcap.
            return match unsafe { Library::new(&path) } {
                Ok(lib) => unsafe { Api::bind(lib, shown) },
                Err(e) => Err(format!("TAPWATCH_LIBPCAP={shown}: {e}")),
            };
        }
        let mut tried = Vec::new();
        for name in SONAMES {
            // SAFETY: loading runs the library's initialisers; libpcap's only set up its
            // own state.
            match unsafe { Library::new(name) } {
                // SAFETY: a library by one of libpcap's names.
                Ok(lib) => return unsafe { Api::bind(lib, name.to_string()) },
                Err(e) => tried.push(e.to_string()),
            }
        }
        Err(format!(
            "libpcap is not installed (Debian/Ubuntu: apt install libpcap0.8, or \
             libpcap0.8t64 on Ubuntu 24.04; RHEL/Fedora: dnf install libpcap; or point \
             TAPWATCH_LIBPCAP at it): {}",
            tried.join("; ")
        ))
    })
    .as_ref()
    .map_err(Clone::clone)
}

/// The library found and its version (`libpcap.so.0.8: libpcap version 1.10.3`), or why
/// there is none.
pub fn describe() -> Result<String, String> {
    let api = api()?;
    // SAFETY: pcap_lib_version returns a static NUL-terminated string.
    let version = unsafe { CStr::from_ptr((api.pcap_lib_version)()) };
    Ok(format!("{}: {}", api.soname, version.to_string_lossy()))
}

/// An activated, non-blocking capture handle on one interface and direction.
pub struct Capture {
    api: &'static Api,
    p: *mut RawPcap,
    /// Whether timestamps come in nanoseconds (else microseconds).
    nano: bool,
}

// SAFETY: a pcap_t may be used from any thread as long as one thread at a time does; a
// Capture is owned by one capture thread and not shared.
unsafe impl Send for Capture {}

/// What a read gave.
pub enum Next<'a> {
    /// A frame: its time (seconds, nanoseconds), its length on the wire, and the bytes
    /// captured.
    Frame {
        sec: i64,
        nsec: i64,
        len: u32,
        data: &'a [u8],
    },
    /// Nothing to read now.
    Empty,
}

impl Capture {
    /// Opens `ifname` for frames in one direction (`inbound`: received on the interface),
    /// in immediate mode with nanosecond timestamps, not blocking.
    pub fn open(
        ifname: &str,
        inbound: bool,
        snaplen: i32,
        timeout_ms: i32,
    ) -> Result<Self, String> {
        let api = api()?;
        let dev = CString::new(ifname).map_err(|_| format!("bad interface name {ifname:?}"))?;
        let mut errbuf = [0 as c_char; ERRBUF_SIZE];
        // SAFETY: a NUL-terminated name and an error buffer of the size libpcap writes.
        let p = unsafe { (api.pcap_create)(dev.as_ptr(), errbuf.as_mut_ptr()) };
        if p.is_null() {
            return Err(text(errbuf.as_ptr()));
        }
        // From here on, Drop closes the handle whatever fails.
        let mut cap = Capture {
            api,
            p,
            nano: false,
        };
        // SAFETY (each call below): `p` is the live handle created above, errbuf as above.
        unsafe {
            (api.pcap_set_immediate_mode)(p, 1);
            (api.pcap_set_timeout)(p, timeout_ms);
            (api.pcap_set_snaplen)(p, snaplen);
            // Where nanoseconds are not offered, microseconds are converted in `next`.
            cap.nano = (api.pcap_set_tstamp_precision)(p, TSTAMP_PRECISION_NANO) == 0;
            let rc = (api.pcap_activate)(p);
            if rc < 0 {
                return Err(cap.error(rc));
            }
            if (api.pcap_setdirection)(p, if inbound { D_IN } else { D_OUT }) != 0 {
                return Err(cap.error(-1));
            }
            if (api.pcap_setnonblock)(p, 1, errbuf.as_mut_ptr()) != 0 {
                return Err(text(errbuf.as_ptr()));
            }
        }
        Ok(cap)
    }

    /// libpcap's message for the last failure, else its words for `status`.
    fn error(&self, status: c_int) -> String {
        // SAFETY: a live handle; both return NUL-terminated strings libpcap owns.
        let msg = text(unsafe { (self.api.pcap_geterr)(self.p) });
        if msg.is_empty() {
            text(unsafe { (self.api.pcap_statustostr)(status) })
        } else {
            msg
        }
    }

    /// The descriptor to poll for readability.
    pub fn fd(&self) -> c_int {
        // SAFETY: a live handle.
        unsafe { (self.api.pcap_get_selectable_fd)(self.p) }
    }

    /// The next frame, if one is there.
    pub fn read(&mut self) -> Result<Next<'_>, String> {
        let mut hdr: *mut PktHdr = std::ptr::null_mut();
        let mut data: *const u8 = std::ptr::null();
        // SAFETY: a live handle and two out-pointers.
        match unsafe { (self.api.pcap_next_ex)(self.p, &mut hdr, &mut data) } {
            1 => {
                // SAFETY: on 1 libpcap set both pointers; the header and `caplen` bytes stay
                // valid until the next call on this handle, which the borrow of self rules
                // out.
                let h = unsafe { *hdr };
                let data = unsafe { std::slice::from_raw_parts(data, h.caplen as usize) };
                Ok(Next::Frame {
                    sec: h.ts.tv_sec,
                    // With nanosecond precision, tv_usec holds nanoseconds.
                    nsec: if self.nano {
                        h.ts.tv_usec
                    } else {
                        h.ts.tv_usec * 1000
                    },
                    len: h.len,
                    data,
                })
            }
            0 => Ok(Next::Empty),
            rc => Err(self.error(rc)),
        }
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        // SAFETY: the handle is live and never used again.
        unsafe { (self.api.pcap_close)(self.p) }
    }
}

fn text(p: *const c_char) -> String {
    if p.is_null() {
        return String::new();
    }
    // SAFETY: libpcap's strings are NUL-terminated.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}
