//! What the binary needs from the system it is copied to: glibc 2.34 at most (RHEL 9 has
//! 2.34, Ubuntu 22.04 2.35, Debian 12 2.36) and no libpcap to start (it is loaded only for
//! the pcap datapath). Root-free. Checks the binary this build made, or the one named by
//! TAPWATCH_BINARY (`cargo xtask dist` points it at the release binary it packages).

use std::process::Command;

/// The newest glibc symbol version the binary may need.
const MAX_GLIBC: (u32, u32) = (2, 34);

fn binary() -> String {
    std::env::var("TAPWATCH_BINARY").unwrap_or_else(|_| env!("CARGO_BIN_EXE_tapwatch").into())
}

fn objdump(args: &[&str]) -> String {
    let bin = binary();
    let out = Command::new("objdump")
        .args(args)
        .arg(&bin)
        .output()
        .expect("objdump (binutils) runs");
    assert!(out.status.success(), "objdump {args:?} {bin}: {:?}", out);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `GLIBC_2.34` → (2, 34); other version names (GCC_, a library's own) → None.
fn glibc_version(name: &str) -> Option<(u32, u32)> {
    let v = name.strip_prefix("GLIBC_")?;
    let mut parts = v.split('.').map(|p| p.parse::<u32>().ok());
    Some((parts.next()??, parts.next().flatten().unwrap_or(0)))
}

#[test]
fn needs_no_glibc_newer_than_2_34() {
    let table = objdump(&["-T"]);
    let mut too_new = Vec::new();
    let mut newest = (0, 0);
    for line in table.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        // … DF *UND* 0000000000000000 (GLIBC_2.34) __libc_start_main
        let Some(v) = fields
            .iter()
            .map(|f| f.trim_matches(|c| c == '(' || c == ')'))
            .find_map(glibc_version)
        else {
            continue;
        };
        newest = newest.max(v);
        if v > MAX_GLIBC {
            too_new.push(line.trim().to_string());
        }
    }
    assert!(newest >= (2, 2), "no versioned glibc symbol read:\n{table}");
    assert!(
        too_new.is_empty(),
        "the binary needs glibc newer than {}.{}: {too_new:#?}",
        MAX_GLIBC.0,
        MAX_GLIBC.1
    );
}

#[test]
fn starts_without_libpcap() {
    let needed: Vec<String> = objdump(&["-p"])
        .lines()
        .filter_map(|l| l.trim().strip_prefix("NEEDED"))
        .map(|l| l.trim().to_string())
        .collect();
    assert!(
        needed.iter().any(|n| n.starts_with("libc.so")),
        "{needed:?}"
    );
    assert!(
        !needed.iter().any(|n| n.contains("pcap")),
        "libpcap is linked, so the binary does not start where its soname differs: {needed:?}"
    );
}

#[test]
fn the_version_names_the_build() {
    let out = Command::new(binary()).arg("-V").output().unwrap();
    assert!(out.status.success());
    let v = String::from_utf8_lossy(&out.stdout);
    assert!(
        v.starts_with(&format!("tapwatch {} (commit ", env!("CARGO_PKG_VERSION"))),
        "{v}"
    );
    assert!(v.contains("eBPF object sha256 "), "{v}");
}

#[test]
fn the_glibc_version_parser() {
    assert_eq!(glibc_version("GLIBC_2.34"), Some((2, 34)));
    assert_eq!(glibc_version("GLIBC_2.2.5"), Some((2, 2)));
    assert_eq!(glibc_version("GLIBC_PRIVATE"), None);
    assert_eq!(glibc_version("GCC_3.0"), None);
}

/// Without libpcap the binary still starts, and says what the pcap datapath lacks.
#[test]
fn without_libpcap_it_starts_and_says_so() {
    let out = Command::new(binary())
        .arg("--version")
        .env("TAPWATCH_LIBPCAP", "/nonexistent/libpcap.so.1")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let v = String::from_utf8_lossy(&out.stdout);
    let pcap = v
        .lines()
        .find(|l| l.trim_start().starts_with("pcap"))
        .unwrap();
    assert!(
        pcap.contains("no: TAPWATCH_LIBPCAP=/nonexistent/libpcap.so.1"),
        "{v}"
    );
}
