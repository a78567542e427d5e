//! Upload throughput and memory (bench/uploads.sh; figures in bench/RESULTS.md).
//!
//! For a local directory and for an S3 API (s3s-fs, in this process, checking signatures),
//! uploads 1 MiB and 32 MiB PDFs through a `shipshape serve` process (release build, SQLite),
//! and writes the same bytes straight to the same store with plain `object_store` (one `put`,
//! or a multipart upload in 5 MiB parts: what the service does, without HTTP, multipart
//! parsing, type sniffing, hashing and the row). Alternating rounds; prints one JSON object
//! with MiB/s of each, the median of the per-round ratios, and the server's peak RSS growth
//! while it took each size.
//!
//! Run: `target/release/examples/upload_bench target/release/shipshape`

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{ClientOptions, ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};
use serde_json::{Value, json};

const ROUNDS: usize = 3;
const ACCESS_KEY: &str = "bench-access-key";
const SECRET_KEY: &str = "bench-secret-key-0123456789";
const BUCKET: &str = "bench";
const BOUNDARY: &str = "bench-boundary";
/// Files per batch, so each batch moves 64 MiB or more.
const SIZES: [(usize, usize); 2] = [(1 << 20, 64), (32 << 20, 4)];

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn pdf(len: usize, seed: u8) -> Vec<u8> {
    let mut bytes: Vec<u8> = (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect();
    bytes[..9].copy_from_slice(b"%PDF-1.7\n");
    bytes
}

fn multipart(bytes: &[u8]) -> Vec<u8> {
    let mut body = format!(
        "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"bench.pdf\"\r\nContent-Type: application/pdf\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(bytes);
    body.extend_from_slice(format!("\r\n--{BOUNDARY}--\r\n").as_bytes());
    body
}

fn memory(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    let line = status.lines().find(|l| l.starts_with(field)).expect("field");
    line.split_whitespace()
        .nth(1)
        .and_then(|kb| kb.parse::<u64>().ok())
        .expect("kB")
        * 1024
}

async fn start_s3(root: &std::path::Path) -> u16 {
    std::fs::create_dir_all(root.join(BUCKET)).expect("bucket");
    let mut builder = s3s::service::S3ServiceBuilder::new(s3s_fs::FileSystem::new(root).expect("s3s-fs"));
    builder.set_auth(s3s::auth::SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
    let service = builder.build();
    let port = free_port();
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.expect("bind");
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let service = service.clone();
            tokio::spawn(async move {
                let http = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
                let _ = http
                    .serve_connection(hyper_util::rt::TokioIo::new(socket), service)
                    .await;
            });
        }
    });
    port
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What one store is: the service's storage settings and the plain client of the same store.
struct Target {
    name: &'static str,
    env: Vec<(&'static str, String)>,
    store: Box<dyn ObjectStore>,
}

async fn measure(binary: &str, target: &Target, work: &tempfile::TempDir) -> Value {
    let port = free_port();
    let mut command = Command::new(binary);
    command
        .arg("serve")
        .current_dir(work.path())
        .env_clear()
        .env("PORT", port.to_string())
        .env("SECRET_KEY", "bench-secret-key-bench-secret-key-0123")
        .env("LOG_LEVEL", "warn")
        .env("MAX_UPLOAD_BYTES", (64u64 << 20).to_string())
        .env("UPLOAD_QUOTA_BYTES_PER_USER", (1u64 << 40).to_string())
        .env("RATE_LIMIT_UPLOAD", "off")
        .env("RATE_LIMIT_GLOBAL", "off")
        .env("REQUEST_TIMEOUT_SECS", "300")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for (key, value) in &target.env {
        command.env(key, value);
    }
    let server = Server(command.spawn().expect("start shipshape"));
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(300))
        .build()
        .expect("client");
    let deadline = Instant::now() + Duration::from_secs(20);
    while client.get(format!("{base}/healthz")).send().await.is_err() {
        assert!(Instant::now() < deadline, "shipshape did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let signup: Value = client
        .post(format!("{base}/api/v1/auth/signup"))
        .json(&json!({"email": "bench@example.com", "password": "correct horse battery staple"}))
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .expect("signup")
        .json()
        .await
        .expect("json");
    let token = signup["token"].as_str().expect("token").to_owned();
    let invoice: Value = client
        .post(format!("{base}/api/v1/invoices"))
        .bearer_auth(&token)
        .json(&json!({"customer_name": "Bench", "amount_cents": 100, "currency": "USD"}))
        .send()
        .await
        .expect("invoice")
        .json()
        .await
        .expect("json");
    let url = format!(
        "{base}/api/v1/invoices/{}/attachments",
        invoice["id"].as_str().expect("id")
    );
    let pid = server.0.id();

    let mut rows = Vec::new();
    for (size, count) in SIZES {
        let file = pdf(size, 7);
        let body = axum::body::Bytes::from(multipart(&file));
        let payload = axum::body::Bytes::from(file);
        let mib = (size * count) as f64 / (1 << 20) as f64;
        let (mut service, mut plain, mut ratios, mut grown) = (Vec::new(), Vec::new(), Vec::new(), 0u64);
        for round in 0..ROUNDS {
            std::fs::write(format!("/proc/{pid}/clear_refs"), "5").expect("clear_refs");
            let before = memory(pid, "VmRSS:");
            let started = Instant::now();
            for _ in 0..count {
                let response = client
                    .post(&url)
                    .bearer_auth(&token)
                    .header("content-type", format!("multipart/form-data; boundary={BOUNDARY}"))
                    .body(body.clone())
                    .send()
                    .await
                    .expect("upload");
                assert_eq!(response.status(), 201, "upload refused");
            }
            let through_service = mib / started.elapsed().as_secs_f64();
            grown = grown.max(memory(pid, "VmHWM:").saturating_sub(before));

            let started = Instant::now();
            for i in 0..count {
                let key = Path::from(format!("plain/{round}-{i}"));
                if size <= 5 << 20 {
                    target
                        .store
                        .put(&key, PutPayload::from(payload.clone()))
                        .await
                        .expect("put");
                } else {
                    let upload = target.store.put_multipart(&key).await.expect("multipart");
                    let mut writer = WriteMultipart::new_with_chunk_size(upload, 5 << 20);
                    for chunk in payload.chunks(1 << 20) {
                        writer.wait_for_capacity(1).await.expect("capacity");
                        writer.put(payload.slice_ref(chunk));
                    }
                    writer.finish().await.expect("finish");
                }
            }
            let direct = mib / started.elapsed().as_secs_f64();
            service.push(through_service);
            plain.push(direct);
            ratios.push(through_service / direct);
        }
        let median = |values: &mut Vec<f64>| {
            values.sort_by(f64::total_cmp);
            values[values.len() / 2]
        };
        rows.push(json!({
            "store": target.name,
            "file_mib": size >> 20,
            "files_per_round": count,
            "service_mib_s": median(&mut service),
            "plain_object_store_mib_s": median(&mut plain),
            "ratio": median(&mut ratios),
            "peak_rss_growth_mib": grown as f64 / (1 << 20) as f64,
        }));
    }
    rows.push(json!({"store": target.name, "server_peak_rss_mib": memory(pid, "VmHWM:") as f64 / (1 << 20) as f64}));
    Value::Array(rows)
}

#[tokio::main]
async fn main() {
    let binary = std::env::args().nth(1).expect("usage: upload_bench PATH/TO/shipshape");
    // The server runs in a folder of its own.
    let binary = std::fs::canonicalize(&binary)
        .expect("the shipshape binary")
        .display()
        .to_string();
    shipshape::install_crypto_provider();
    let s3_root = tempfile::tempdir().expect("temp dir");
    let s3_port = start_s3(s3_root.path()).await;
    let disk = tempfile::tempdir().expect("temp dir");
    let uploads = disk.path().join("uploads");
    std::fs::create_dir_all(&uploads).expect("uploads dir");
    let endpoint = format!("http://127.0.0.1:{s3_port}");
    let targets = [
        Target {
            name: "disk",
            env: vec![("STORAGE_URL", format!("file://{}", uploads.display()))],
            store: Box::new(LocalFileSystem::new_with_prefix(&uploads).expect("local store")),
        },
        Target {
            name: "s3 (s3s-fs)",
            env: vec![
                ("STORAGE_URL", format!("s3://{BUCKET}")),
                ("AWS_ACCESS_KEY_ID", ACCESS_KEY.to_owned()),
                ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.to_owned()),
                ("AWS_ENDPOINT_URL_S3", endpoint.clone()),
            ],
            store: Box::new(
                AmazonS3Builder::new()
                    .with_bucket_name(BUCKET)
                    .with_region("auto")
                    .with_endpoint(&endpoint)
                    .with_access_key_id(ACCESS_KEY)
                    .with_secret_access_key(SECRET_KEY)
                    .with_client_options(ClientOptions::new().with_allow_http(true))
                    .build()
                    .expect("s3 store"),
            ),
        },
    ];
    let mut results = Vec::new();
    for target in &targets {
        let work = tempfile::tempdir().expect("temp dir");
        results.push(measure(&binary, target, &work).await);
    }
    println!("{}", Value::Array(results));
}
