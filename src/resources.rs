//! How much memory a piece of work will need, checked before it allocates: a command
//! that cannot fit is refused with its estimate and the flag that sizes it, instead of
//! being killed by the kernel (or aborting in the allocator) minutes later.

use anyhow::{bail, Result};

/// Bytes this process may still allocate: the smaller of the kernel's MemAvailable and
/// what the cgroup's memory.max leaves (containers and Slurm jobs set one). `None` when
/// neither can be read (not Linux).
pub fn available_memory() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok().and_then(|text| {
        text.lines()
            .find_map(|l| l.strip_prefix("MemAvailable:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kb| kb * 1024)
    });
    let cgroup = (|| {
        let max = std::fs::read_to_string("/sys/fs/cgroup/memory.max").ok()?;
        let max: u64 = max.trim().parse().ok()?; // "max" (no limit) does not parse
        let current: u64 = std::fs::read_to_string("/sys/fs/cgroup/memory.current").ok()?.trim().parse().ok()?;
        Some(max.saturating_sub(current))
    })();
    match (meminfo, cgroup) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// A byte count for people: 1.5 GiB, 300 MiB.
pub fn human_bytes(bytes: u64) -> String {
    let b = bytes as f64;
    const UNITS: [&str; 6] = ["bytes", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut unit = 0;
    let mut v = b;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{bytes} bytes") } else { format!("{v:.1} {}", UNITS[unit]) }
}

/// Refuses work whose parts (what, bytes) need more than `available` bytes; `flag`
/// names what the user can change.
pub fn check_memory_against(parts: &[(&str, u64)], flag: &str, available: Option<u64>) -> Result<()> {
    let need = parts.iter().fold(0u64, |a, &(_, b)| a.saturating_add(b));
    let Some(available) = available else { return Ok(()) };
    if need > available {
        let list: Vec<String> = parts.iter().map(|(what, b)| format!("{what} {}", human_bytes(*b))).collect();
        bail!(
            "this needs about {} of memory ({}) but {} is available; reduce {flag}",
            human_bytes(need),
            list.join(", "),
            human_bytes(available)
        );
    }
    Ok(())
}

/// `check_memory_against` this machine's available memory. `ROTE_MEMORY_LIMIT` (bytes)
/// lowers the limit further, e.g. for a job that shares its node.
pub fn check_memory(parts: &[(&str, u64)], flag: &str) -> Result<()> {
    let limit = std::env::var("ROTE_MEMORY_LIMIT").ok().and_then(|v| v.parse::<u64>().ok());
    let available = match (available_memory(), limit) {
        (Some(a), Some(l)) => Some(a.min(l)),
        (a, l) => a.or(l),
    };
    check_memory_against(parts, flag, available)
}

/// a·b·…, saturating instead of wrapping.
pub fn product(factors: &[usize]) -> u64 {
    factors.iter().fold(1u64, |a, &f| a.saturating_mul(f as u64))
}

/// On a GPU backend, refuses work whose device buffers (what, bytes) exceed the device's
/// memory; on the CPU nothing to check (the host check covers it).
pub fn check_device_memory(backend: &crate::device::Backend, parts: &[(&str, u64)], flag: &str) -> Result<()> {
    match backend {
        crate::device::Backend::Cpu => Ok(()),
        crate::device::Backend::Cuda(c) => {
            let total = c.info().total_memory_bytes as u64;
            check_memory_against(parts, flag, Some(total)).map_err(|e| e.context(format!("on {} ({} of device memory)", c.info().name, human_bytes(total))))
        }
    }
}
