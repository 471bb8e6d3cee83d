//! Facts about this machine that kmm checks before acting: RAM (via `sysinfo`), CPU model,
//! cores and the instruction-set features that matter for inference, free disk under the models
//! directory, NVIDIA GPUs with their VRAM from `nvidia-smi`, and the CPU time kmm itself has used
//! (downloads read it to tell a slow link from a busy machine).
//!
//! A missing or failing `nvidia-smi` means "no NVIDIA GPU found", never an error: most machines
//! that run kmm have none. The parser of its CSV output is separate ([`parse_nvidia_smi`]) so it
//! can be tested on recorded outputs (`tests/fixtures/nvidia-smi/`).
//!
//! Edges: reads system state (and runs `nvidia-smi`); decides nothing. Verdicts are
//! [`crate::compat`]'s job, which takes a [`MachineFacts`] value so tests can pass fixed facts.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// What kmm knows about this machine.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MachineFacts {
    pub total_ram_bytes: u64,
    pub available_ram_bytes: u64,
    pub cpu_model: String,
    /// Logical cores.
    pub cpu_cores: usize,
    /// `x86_64`, `aarch64`, ...
    pub arch: String,
    /// Present features among avx, avx2, avx512f, fma, f16c (x86_64) and neon (aarch64).
    pub cpu_features: Vec<String>,
    /// Free bytes on the filesystem of the models directory (`None` when it could not be read).
    pub free_disk_bytes: Option<u64>,
    pub gpus: Vec<Gpu>,
    /// Why no GPU is listed (`nvidia-smi` absent or failing), for the report.
    pub gpu_note: Option<String>,
}

impl MachineFacts {
    pub fn has_feature(&self, name: &str) -> bool {
        self.cpu_features.iter().any(|f| f == name)
    }
}

/// One GPU as `nvidia-smi` reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Gpu {
    pub name: String,
    pub memory_total_bytes: u64,
    pub memory_free_bytes: u64,
}

/// Reads the facts of this machine; `models_dir` is where free disk is measured.
pub fn machine_facts(models_dir: &Path) -> MachineFacts {
    let mut system = sysinfo::System::new();
    system.refresh_memory();
    system.refresh_cpu_list(sysinfo::CpuRefreshKind::nothing());
    let cpu_model = system
        .cpus()
        .first()
        .map(|cpu| cpu.brand().trim().to_string())
        .unwrap_or_default();
    let (gpus, gpu_note) = match query_nvidia_smi("nvidia-smi") {
        Ok(gpus) if gpus.is_empty() => (gpus, Some("nvidia-smi lists no GPU".to_string())),
        Ok(gpus) => (gpus, None),
        Err(reason) => (Vec::new(), Some(format!("no NVIDIA GPU found ({reason})"))),
    };
    MachineFacts {
        total_ram_bytes: system.total_memory(),
        available_ram_bytes: system.available_memory(),
        cpu_model,
        cpu_cores: system.cpus().len().max(1),
        arch: std::env::consts::ARCH.to_string(),
        cpu_features: cpu_features(),
        free_disk_bytes: free_disk_bytes(models_dir).ok(),
        gpus,
        gpu_note,
    }
}

/// The inference-relevant instruction-set features this CPU has.
pub fn cpu_features() -> Vec<String> {
    #[allow(unused_mut)]
    let mut features: Vec<String> = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        let checks = [
            ("avx", std::arch::is_x86_feature_detected!("avx")),
            ("avx2", std::arch::is_x86_feature_detected!("avx2")),
            ("avx512f", std::arch::is_x86_feature_detected!("avx512f")),
            ("fma", std::arch::is_x86_feature_detected!("fma")),
            ("f16c", std::arch::is_x86_feature_detected!("f16c")),
        ];
        features.extend(
            checks
                .iter()
                .filter(|(_, present)| *present)
                .map(|(name, _)| name.to_string()),
        );
    }
    #[cfg(target_arch = "aarch64")]
    {
        if std::arch::is_aarch64_feature_detected!("neon") {
            features.push("neon".to_string());
        }
    }
    features
}

/// Runs `program --query-gpu=name,memory.total,memory.free --format=csv,noheader,nounits`.
/// `Err` carries the reason there is no answer (not installed, failed, unreadable output).
pub fn query_nvidia_smi(program: &str) -> std::result::Result<Vec<Gpu>, String> {
    let output = std::process::Command::new(program)
        .args([
            "--query-gpu=name,memory.total,memory.free",
            "--format=csv,noheader,nounits",
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|error| format!("`{program}` could not run: {error}"))?;
    if !output.status.success() {
        // nvidia-smi prints its reason ("couldn't communicate with the NVIDIA driver") on stdout.
        let text = format!(
            "{}\n{}",
            String::from_utf8_lossy(&output.stderr),
            String::from_utf8_lossy(&output.stdout)
        );
        let reason = text.lines().map(str::trim).find(|l| !l.is_empty());
        return Err(match reason {
            Some(reason) => format!("`{program}` failed with {}: {reason}", output.status),
            None => format!("`{program}` failed with {}", output.status),
        });
    }
    parse_nvidia_smi(&String::from_utf8_lossy(&output.stdout))
}

/// Parses `name, memory.total, memory.free` lines (MiB, as `nounits` prints them).
pub fn parse_nvidia_smi(text: &str) -> std::result::Result<Vec<Gpu>, String> {
    let mut gpus = Vec::new();
    for line in text.lines().map(str::trim).filter(|line| !line.is_empty()) {
        // The name may hold commas; the two numbers are always the last fields.
        let mut fields = line.rsplitn(3, ',').map(str::trim);
        let (Some(free), Some(total), Some(name)) = (fields.next(), fields.next(), fields.next())
        else {
            return Err(format!("unexpected nvidia-smi line `{line}`"));
        };
        let mib = |text: &str| {
            text.parse::<u64>()
                .map(|mib| mib * 1024 * 1024)
                .map_err(|_| {
                    format!("unexpected memory value `{text}` in nvidia-smi line `{line}`")
                })
        };
        gpus.push(Gpu {
            name: name.to_string(),
            memory_total_bytes: mib(total)?,
            memory_free_bytes: mib(free)?,
        });
    }
    Ok(gpus)
}

/// Bytes available to an unprivileged user on the filesystem holding `path`, or on the filesystem
/// of its nearest existing ancestor when `path` does not exist yet.
pub fn free_disk_bytes(path: &Path) -> Result<u64> {
    let mut probe = path;
    while !probe.exists() {
        probe = match probe.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent,
            _ => Path::new("."),
        };
        if probe == Path::new(".") {
            break;
        }
    }
    statvfs_available(probe)
}

#[cfg(unix)]
fn statvfs_available(path: &Path) -> Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| Error::args(format!("path {} contains a NUL byte", path.display())))?;
    let mut stats: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: c_path is a valid NUL-terminated string and stats a properly sized out-parameter.
    let status = unsafe { libc::statvfs(c_path.as_ptr(), &mut stats) };
    if status != 0 {
        let error = std::io::Error::last_os_error();
        return Err(Error::io(
            format!("checking free space on {}", path.display()),
            &error,
        ));
    }
    #[allow(clippy::unnecessary_cast)] // the field types differ between platforms
    Ok(stats.f_bavail as u64 * stats.f_frsize as u64)
}

#[cfg(not(unix))]
fn statvfs_available(_path: &Path) -> Result<u64> {
    Ok(u64::MAX)
}

/// CPU time (user + system) this process has used so far, all threads; `None` where it cannot
/// be read.
#[cfg(unix)]
pub fn process_cpu_time() -> Option<std::time::Duration> {
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: usage is a properly sized out-parameter.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return None;
    }
    let time = |t: libc::timeval| {
        std::time::Duration::from_secs(t.tv_sec as u64)
            + std::time::Duration::from_micros(t.tv_usec as u64)
    };
    Some(time(usage.ru_utime) + time(usage.ru_stime))
}

#[cfg(not(unix))]
pub fn process_cpu_time() -> Option<std::time::Duration> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> String {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/nvidia-smi")
            .join(name);
        fs_err::read_to_string(path).unwrap()
    }

    #[test]
    fn process_cpu_time_grows_with_work() {
        let before = process_cpu_time().expect("getrusage works on unix");
        let started = std::time::Instant::now();
        let mut x = 0u64;
        // Spin until the clock shows 20 ms of CPU; a broken reading never gets there, and the
        // 10 s limit only bounds the failure (a busy machine still gives a spinning thread
        // 20 ms of CPU long before).
        let mut used = std::time::Duration::ZERO;
        while used < std::time::Duration::from_millis(20)
            && started.elapsed() < std::time::Duration::from_secs(10)
        {
            for _ in 0..100_000 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
            }
            used = process_cpu_time().unwrap().saturating_sub(before);
        }
        assert!(used >= std::time::Duration::from_millis(20), "{used:?}");
    }

    #[test]
    fn nvidia_smi_output_of_two_gpus_is_parsed() {
        let gpus = parse_nvidia_smi(&fixture("two-gpus.csv")).unwrap();
        assert_eq!(gpus.len(), 2);
        assert_eq!(gpus[0].name, "NVIDIA GeForce RTX 3090");
        assert_eq!(gpus[0].memory_total_bytes, 24576 * 1024 * 1024);
        assert_eq!(gpus[0].memory_free_bytes, 23800 * 1024 * 1024);
        assert_eq!(gpus[1].name, "NVIDIA A100-SXM4-80GB");
        assert_eq!(gpus[1].memory_free_bytes, 81037 * 1024 * 1024);
    }

    #[test]
    fn nvidia_smi_names_with_commas_and_empty_output() {
        let gpus = parse_nvidia_smi(&fixture("comma-in-name.csv")).unwrap();
        assert_eq!(gpus[0].name, "Tesla T4, rev. A1");
        assert_eq!(gpus[0].memory_total_bytes, 15360 * 1024 * 1024);
        assert!(
            parse_nvidia_smi(&fixture("no-devices.csv"))
                .unwrap()
                .is_empty()
        );
        assert!(parse_nvidia_smi("garbage without commas\n").is_err());
        assert!(parse_nvidia_smi("GPU, [N/A], 12\n").is_err());
    }

    #[test]
    fn a_missing_or_failing_nvidia_smi_is_no_gpu_not_an_error() {
        let reason = query_nvidia_smi("/nonexistent/nvidia-smi").unwrap_err();
        assert!(reason.contains("could not run"), "{reason}");
        let reason = query_nvidia_smi("false").unwrap_err();
        assert!(reason.contains("failed"), "{reason}");
        let facts = machine_facts(Path::new("."));
        assert!(facts.total_ram_bytes > 0 && facts.cpu_cores > 0);
        assert!(facts.gpus.is_empty() == facts.gpu_note.is_some());
    }

    #[test]
    fn free_space_of_a_missing_path_is_that_of_its_ancestor() {
        let dir = tempfile::tempdir().unwrap();
        let here = free_disk_bytes(dir.path()).unwrap();
        let below = free_disk_bytes(&dir.path().join("not/yet/there")).unwrap();
        assert!(here > 0);
        // Same filesystem: the two readings are close (other processes may write meanwhile).
        assert!(here.abs_diff(below) < 1 << 30);
    }
}
