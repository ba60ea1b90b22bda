//! Reading a host's facts back: a `tapwatch facts --json` file, or a bundle (its
//! host.json: the host and the VMs behind its taps, without their disks).

use std::{io::Read, path::Path};

use super::{bundle, read_host_json, AnalyzeError};
use crate::{
    model::{
        facts::{Facts, IfaceFacts, VmFacts},
        host::HostJson,
    },
    verdict::forecast::SourceTap,
};

/// The longest facts file read: a few KB per VM.
const MAX_FACTS: u64 = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum FactsError {
    #[error(
        "{0}: neither a facts file (`tapwatch facts --json > FILE`) nor a bundle (a \
         directory or .tar.gz with host.json)"
    )]
    NotFacts(String),
    #[error("{path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Bundle(#[from] AnalyzeError),
}

/// The facts at `path`: a facts file, a host.json, or a bundle.
pub fn read_facts(path: &Path) -> Result<Facts, FactsError> {
    let shown = path.display().to_string();
    let meta = std::fs::metadata(path).map_err(|source| FactsError::Read {
        path: shown.clone(),
        source,
    })?;
    if meta.is_file() {
        let mut bytes = Vec::new();
        std::fs::File::open(path)
            .and_then(|f| f.take(MAX_FACTS + 1).read_to_end(&mut bytes))
            .map_err(|source| FactsError::Read {
                path: shown.clone(),
                source,
            })?;
        let json = bytes.len() as u64 <= MAX_FACTS
            && bytes.first() == Some(&b'{')
            && bundle::within_values(&bytes, bundle::MAX_VALUES);
        if json {
            if let Ok(f) = serde_json::from_slice::<Facts>(&bytes) {
                return Ok(f);
            }
            if let Ok(h) = serde_json::from_slice::<HostJson>(&bytes) {
                return Ok(from_host_json(h));
            }
            return Err(FactsError::NotFacts(shown));
        }
    }
    match read_host_json(path)? {
        Some(h) => Ok(from_host_json(h)),
        None => Err(FactsError::NotFacts(shown)),
    }
}

/// A bundle's host.json as facts: its host, and the VMs libvirt named behind its taps.
pub fn from_host_json(h: HostJson) -> Facts {
    let mut vms: Vec<VmFacts> = Vec::new();
    for t in h.taps.values() {
        let Some(vm) = &t.libvirt else { continue };
        let iface = IfaceFacts::of(vm, t.mac, t.mtu);
        match vms.iter_mut().find(|v| v.domain == vm.domain) {
            Some(v) => v.interfaces.push(iface),
            None => vms.push(VmFacts {
                domain: vm.domain.clone(),
                uuid: vm.uuid.clone(),
                nova_name: vm.nova_name.clone(),
                state: vm.state.clone(),
                cpu: vm.cpu.clone(),
                interfaces: vec![iface],
                disks: None,
            }),
        }
    }
    Facts {
        tool: h.tool,
        version: h.version,
        facts: 0,
        taken: h.ended.or(h.started),
        host: h.host,
        instances_dir: None,
        vms,
    }
}

/// The taps a source host's facts say, for certain forecasts on the destination.
pub fn source_taps(f: &Facts) -> Vec<SourceTap> {
    f.vms
        .iter()
        .flat_map(|vm| {
            vm.interfaces.iter().map(move |i| SourceTap {
                domain: vm.domain.clone(),
                uuid: vm.uuid.clone(),
                guest_mac: i.guest_mac,
                tap_mac: i.tap_mac,
            })
        })
        .collect()
}
