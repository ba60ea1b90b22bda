//! What the kernel says about CPU time, memory, descriptors and interface counters.

use std::{fs, time::Duration};

use anyhow::{Context as _, Result};
use diag_user::lab::netns::Netns;
use serde_json::Value;

fn clk_tck() -> f64 {
    // SAFETY: sysconf has no preconditions.
    (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }) as f64
}

/// Busy time of all CPUs together (user, system, interrupts, steal), from /proc/stat.
#[derive(Clone, Copy)]
pub struct SystemCpu(u64);

impl SystemCpu {
    pub fn now() -> Result<Self> {
        let stat = fs::read_to_string("/proc/stat")?;
        let line = stat.lines().next().context("empty /proc/stat")?;
        let f: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .map(|x| x.parse().unwrap_or(0))
            .collect();
        // user nice system idle iowait irq softirq steal
        let busy = f[0] + f[1] + f[2] + f[5] + f[6] + f.get(7).copied().unwrap_or(0);
        Ok(Self(busy))
    }

    /// CPU seconds spent busy since `earlier`.
    pub fn since(self, earlier: SystemCpu) -> f64 {
        (self.0 - earlier.0) as f64 / clk_tck()
    }
}

/// One process's CPU time (all threads), memory and open descriptors.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcSample {
    pub cpu_s: f64,
    pub rss_kb: u64,
    pub peak_rss_kb: u64,
    pub fds: usize,
}

impl ProcSample {
    pub fn of(pid: u32) -> Result<Self> {
        let stat = fs::read_to_string(format!("/proc/{pid}/stat"))
            .with_context(|| format!("process {pid} is gone"))?;
        // Fields after the command name, which is in parentheses and may hold spaces.
        let rest = &stat[stat.rfind(')').context("odd /proc/pid/stat")? + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks: u64 = f[11].parse::<u64>()? + f[12].parse::<u64>()?;
        let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
        let kb = |key: &str| {
            status
                .lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        let fds = fs::read_dir(format!("/proc/{pid}/fd"))?.count();
        Ok(Self {
            cpu_s: ticks as f64 / clk_tck(),
            rss_kb: kb("VmRSS:"),
            peak_rss_kb: kb("VmHWM:"),
            fds,
        })
    }
}

/// `ip -s -s -j link show`: the kernel's `otherhost` drops.
pub struct LinkStats {
    pub otherhost: u64,
}

pub fn link_stats(ns: &Netns, ifname: &str) -> Result<LinkStats> {
    let out = ns.ip(&["-s", "-s", "-j", "link", "show", ifname])?;
    let v: Value = serde_json::from_str(&out).context("ip -j output")?;
    let rx = &v[0]["stats64"]["rx"];
    Ok(LinkStats {
        // Printed only on kernels that count it (>= 6.0); zero until the first such frame.
        otherhost: rx["otherhost"].as_u64().unwrap_or(0),
    })
}

/// The `p`-th percentile (0..=100) of `v`, nearest rank.
pub fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

pub fn median(v: &mut [f64]) -> f64 {
    percentile(v, 50.0)
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The kernel's run statistics of BPF programs, on while this is held.
pub struct RunStats(#[allow(dead_code)] std::os::fd::OwnedFd);

impl RunStats {
    pub fn enable() -> Result<Self> {
        let fd = aya::sys::enable_stats(aya::sys::Stats::RunTime)
            .context("enabling the kernel's BPF run statistics")?;
        Ok(Self(fd))
    }
}

/// How often one program ran and for how long, by its kernel id.
#[derive(Clone, Debug)]
pub struct ProgRun {
    pub id: u32,
    pub name: String,
    pub runs: u64,
    pub ns: u64,
}

impl ProgRun {
    /// What each program did between two readings.
    pub fn since(after: &[ProgRun], before: &[ProgRun]) -> Vec<ProgRun> {
        after
            .iter()
            .map(|a| {
                let b = before.iter().find(|b| b.id == a.id);
                ProgRun {
                    runs: a.runs - b.map_or(0, |b| b.runs),
                    ns: a.ns - b.map_or(0, |b| b.ns),
                    ..a.clone()
                }
            })
            .collect()
    }

    pub fn ns_per_run(&self) -> f64 {
        self.ns as f64 / self.runs.max(1) as f64
    }
}

fn loaded(keep: impl Fn(&aya::programs::ProgramInfo) -> bool) -> Vec<ProgRun> {
    aya::programs::loaded_programs()
        .flatten()
        .filter(|p| keep(p))
        .map(|p| ProgRun {
            id: p.id(),
            name: p.name_as_str().unwrap_or("?").to_string(),
            runs: p.run_count(),
            ns: p.run_time().as_nanos() as u64,
        })
        .collect()
}

/// The programs called `name`.
pub fn programs_named(name: &str) -> Vec<ProgRun> {
    loaded(|p| p.name_as_str() == Some(name))
}

/// The programs process `pid` holds (a tapwatch run's).
pub fn programs_of(pid: u32) -> Vec<ProgRun> {
    let mut ids = std::collections::HashSet::new();
    if let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fdinfo")) {
        for fd in fds.flatten() {
            let info = fs::read_to_string(fd.path()).unwrap_or_default();
            if let Some(id) = info
                .lines()
                .find_map(|l| l.strip_prefix("prog_id:"))
                .and_then(|v| v.trim().parse::<u32>().ok())
            {
                ids.insert(id);
            }
        }
    }
    loaded(|p| ids.contains(&p.id()))
}
