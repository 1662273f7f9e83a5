//! The node's public surfaces: gRPC (`trail.v1.Trail`) and HTTP (health, metrics, the
//! REST query API).

pub mod audit;
pub mod auth;
pub mod cluster;
mod convert;
pub mod forward;
pub mod grpc;
pub mod headers;
pub mod http;
pub mod ingest;
pub mod keys;
pub mod limits;
pub mod meta;
pub mod params;
pub mod proofs;
pub mod query;

/// The process's resident memory, from /proc (Linux); zeros elsewhere.
#[derive(Debug, Default, Clone, Copy)]
pub struct ProcessMemory {
    pub rss_bytes: u64,
    pub peak_rss_bytes: u64,
}

pub fn process_memory() -> ProcessMemory {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return ProcessMemory::default();
    };
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kib| kib.parse::<u64>().ok())
            .map_or(0, |kib| kib * 1024)
    };
    ProcessMemory {
        rss_bytes: field("VmRSS:"),
        peak_rss_bytes: field("VmHWM:"),
    }
}
