//! Files (docs/files.md): invoice attachments uploaded, listed, downloaded and deleted against
//! a real S3 API (s3s-fs, checking signatures) and a local directory, on both databases; every
//! refusal leaves nothing stored; storage faults; the quota under racing uploads; memory of a
//! large upload in a server process; the sweep of objects without a row.

use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;
use sha2::{Digest, Sha256};
use shipshape::config::StorageConfig;
use shipshape::invoices::attachments;

use crate::helpers::*;
use crate::infra::{S3Server, files_under};

/// Where a test's files go: a local directory or the S3 server.
enum Store {
    Disk(tempfile::TempDir),
    S3(S3Server),
}

impl Store {
    fn disk() -> Store {
        Store::Disk(tempfile::tempdir().expect("temp dir"))
    }

    async fn s3() -> Store {
        Store::S3(S3Server::start().await)
    }

    fn config(&self) -> StorageConfig {
        match self {
            Store::Disk(dir) => StorageConfig::Local(dir.path().to_owned()),
            Store::S3(server) => server.storage(""),
        }
    }

    /// Every stored file, unfinished uploads' leftovers included.
    fn objects(&self) -> Vec<String> {
        match self {
            Store::Disk(dir) => files_under(dir.path()),
            Store::S3(server) => {
                let mut all = server.objects();
                all.extend((0..server.pending_parts()).map(|i| format!("(pending part {i})")));
                all
            }
        }
    }

    /// Makes the object at `key` look `age` old.
    fn age(&self, key: &str, age: Duration) {
        let path = match self {
            Store::Disk(dir) => dir.path().join(key),
            Store::S3(_) => unreachable!("aged on disk only"),
        };
        let file = std::fs::File::options().write(true).open(&path).expect("object file");
        file.set_modified(SystemTime::now() - age).expect("set mtime");
    }
}

/// A file of one of the allowed types: its signature, then `len` bytes in all.
fn file_of(signature: &[u8], len: usize, seed: u8) -> Vec<u8> {
    let mut bytes = signature.to_vec();
    bytes.extend((0..len.saturating_sub(signature.len())).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)));
    bytes
}

fn pdf(len: usize) -> Vec<u8> {
    file_of(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n", len, 1)
}

fn png(len: usize) -> Vec<u8> {
    file_of(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR", len, 2)
}

fn sha256_hex(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

const BOUNDARY: &str = "shipshape-test-boundary";

/// One part of a multipart body, written by hand so a test can make it lie or break.
struct Part<'a> {
    name: &'a str,
    filename: Option<&'a str>,
    content_type: &'a str,
    bytes: &'a [u8],
}

fn file_part<'a>(filename: &'a str, content_type: &'a str, bytes: &'a [u8]) -> Part<'a> {
    Part {
        name: "file",
        filename: Some(filename),
        content_type,
        bytes,
    }
}

fn multipart(parts: &[Part]) -> Vec<u8> {
    let mut body = Vec::new();
    for part in parts {
        body.extend_from_slice(
            format!("--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{}\"", part.name).as_bytes(),
        );
        if let Some(filename) = part.filename {
            body.extend_from_slice(format!("; filename=\"{filename}\"").as_bytes());
        }
        body.extend_from_slice(format!("\r\nContent-Type: {}\r\n\r\n", part.content_type).as_bytes());
        body.extend_from_slice(part.bytes);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    body
}

fn attachments_path(invoice: &str) -> String {
    format!("/api/v1/invoices/{invoice}/attachments")
}

async fn upload(app: &TestApp, token: &str, invoice: &str, body: Vec<u8>) -> reqwest::Response {
    app.client
        .post(app.url(&attachments_path(invoice)))
        .bearer_auth(token)
        .header("content-type", format!("multipart/form-data; boundary={BOUNDARY}"))
        .body(body)
        .send()
        .await
        .expect("upload")
}

/// Uploads `bytes` as `name`; asserts 201 and returns the attachment.
async fn attach(app: &TestApp, token: &str, invoice: &str, name: &str, bytes: &[u8]) -> Value {
    let response = upload(
        app,
        token,
        invoice,
        multipart(&[file_part(name, "application/octet-stream", bytes)]),
    )
    .await;
    let status = response.status();
    let body: Value = response.json().await.expect("json");
    assert_eq!(status, 201, "{body}");
    body
}

/// An app on SQLite storing to `store`, a user and their invoice.
async fn start_on(store: &Store, email: &str) -> (TestApp, String, String) {
    let app = TestApp::spawn_with(Backend::Sqlite, |c| c.storage = store.config()).await;
    let (token, invoice) = owner(&app, email).await;
    (app, token, invoice)
}

/// How many attachments the invoice lists.
async fn attachment_count(app: &TestApp, token: &str, invoice: &str) -> usize {
    let list: Value = app
        .get(&attachments_path(invoice), Some(token))
        .await
        .json()
        .await
        .unwrap();
    list["items"].as_array().expect("items").len()
}

/// A signed-up user and an invoice of theirs.
async fn owner(app: &TestApp, email: &str) -> (String, String) {
    let token = app.signup(email).await;
    let invoice = app.create_invoice(&token, 1000).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    (token, invoice)
}

async fn round_trip(backend: Backend, store: Store) {
    let app = TestApp::spawn_with(backend, |c| c.storage = store.config()).await;
    let (token, invoice) = owner(&app, "files@example.com").await;
    // One small file (a single PUT) and one over a part's 5 MiB (a multipart upload on S3).
    let small = pdf(200_000);
    let large = png(6 * 1024 * 1024 + 123);
    let first = attach(&app, &token, &invoice, "receipt.pdf", &small).await;
    let second = attach(&app, &token, &invoice, "scan é.png", &large).await;
    assert_eq!(first["invoice_id"], invoice.as_str());
    assert_eq!(first["filename"], "receipt.pdf");
    assert_eq!(first["content_type"], "application/pdf");
    assert_eq!(first["size_bytes"], small.len());
    assert_eq!(first["sha256"], sha256_hex(&small));
    assert_eq!(second["content_type"], "image/png");
    assert_eq!(second["sha256"], sha256_hex(&large));
    assert!(first["created_at"].is_string());

    let list: Value = app
        .get(&attachments_path(&invoice), Some(&token))
        .await
        .json()
        .await
        .unwrap();
    let ids: Vec<&Value> = list["items"].as_array().unwrap().iter().map(|a| &a["id"]).collect();
    assert_eq!(ids, [&first["id"], &second["id"]], "oldest first");
    let mut keys: Vec<String> = [&first, &second]
        .iter()
        .map(|a| format!("attachments/{}", a["id"].as_str().unwrap()))
        .collect();
    keys.sort();
    assert_eq!(store.objects(), keys, "stored under generated keys, nothing else");

    for (attachment, bytes, mime) in [(&first, &small, "application/pdf"), (&second, &large, "image/png")] {
        let path = format!("{}/{}", attachments_path(&invoice), attachment["id"].as_str().unwrap());
        let response = app.get(&path, Some(&token)).await;
        assert_eq!(response.status(), 200);
        let headers = response.headers().clone();
        assert_eq!(headers["content-type"], mime);
        assert_eq!(headers["content-length"], bytes.len().to_string().as_str());
        assert_eq!(headers["x-content-type-options"], "nosniff");
        assert_eq!(headers["content-security-policy"], "sandbox");
        assert_eq!(headers["cache-control"], "private, no-store");
        assert!(headers.get("content-encoding").is_none(), "served as stored");
        let downloaded = response.bytes().await.unwrap();
        assert_eq!(sha256_hex(&downloaded), sha256_hex(bytes), "bytes identical");
    }
    let path = format!("{}/{}", attachments_path(&invoice), second["id"].as_str().unwrap());
    let disposition = app.get(&path, Some(&token)).await.headers()["content-disposition"].clone();
    assert_eq!(
        disposition,
        "attachment; filename=\"scan _.png\"; filename*=UTF-8''scan%20%C3%A9.png"
    );

    let first_path = format!("{}/{}", attachments_path(&invoice), first["id"].as_str().unwrap());
    assert_eq!(app.delete(&first_path, Some(&token)).await.status(), 204);
    assert_eq!(app.get(&first_path, Some(&token)).await.status(), 404);
    assert_eq!(app.delete(&first_path, Some(&token)).await.status(), 404);
    assert_eq!(
        store.objects(),
        [keys
            .iter()
            .find(|k| k.ends_with(second["id"].as_str().unwrap()))
            .unwrap()
            .clone()]
    );
    app.stop().await;
}

#[tokio::test]
async fn upload_list_download_delete_on_disk_with_sqlite() {
    round_trip(Backend::Sqlite, Store::disk()).await;
}

#[tokio::test]
async fn upload_list_download_delete_on_s3_with_sqlite() {
    round_trip(Backend::Sqlite, Store::s3().await).await;
}

#[tokio::test]
#[cfg_attr(not(test_postgres), ignore = "needs TEST_DATABASE_URL")]
async fn upload_list_download_delete_on_disk_with_postgres() {
    round_trip(Backend::Postgres(postgres_admin()), Store::disk()).await;
}

#[tokio::test]
#[cfg_attr(not(test_postgres), ignore = "needs TEST_DATABASE_URL")]
async fn upload_list_download_delete_on_s3_with_postgres() {
    round_trip(Backend::Postgres(postgres_admin()), Store::s3().await).await;
}

#[tokio::test]
async fn every_refused_upload_leaves_nothing_stored() {
    let store = Store::s3().await;
    let app = TestApp::spawn_with(Backend::Sqlite, |c| {
        c.storage = store.config();
        c.uploads.max_bytes = 1024 * 1024;
        c.uploads.quota_bytes_per_user = 1536 * 1024;
    })
    .await;
    let (token, invoice) = owner(&app, "refused@example.com").await;
    let at_limit = pdf(1024 * 1024);
    let over = pdf(1024 * 1024 + 1);
    let html = b"<!doctype html><html><script>alert(1)</script></html>".repeat(10);
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        (
            "one byte over MAX_UPLOAD_BYTES",
            multipart(&[file_part("big.pdf", "application/pdf", &over)]),
            413,
            "payload_too_large",
        ),
        (
            "HTML sent as a PDF",
            multipart(&[file_part("invoice.pdf", "application/pdf", &html)]),
            415,
            "unsupported_media_type",
        ),
        (
            "two files",
            multipart(&[
                file_part("a.pdf", "application/pdf", &pdf(1000)),
                file_part("b.pdf", "application/pdf", &pdf(1000)),
            ]),
            422,
            "validation_failed",
        ),
        (
            "no part named file",
            multipart(&[Part {
                name: "document",
                filename: Some("a.pdf"),
                content_type: "application/pdf",
                bytes: &pdf(1000),
            }]),
            422,
            "validation_failed",
        ),
        ("no part at all", multipart(&[]), 422, "validation_failed"),
        (
            "an empty file",
            multipart(&[file_part("empty.pdf", "application/pdf", b"")]),
            422,
            "validation_failed",
        ),
        (
            "a truncated body",
            multipart(&[file_part("cut.pdf", "application/pdf", &pdf(100_000))])[..50_000].to_vec(),
            422,
            "validation_failed",
        ),
    ];
    for (what, body, status, code) in cases {
        let response = upload(&app, &token, &invoice, body).await;
        assert_error(response, status, code).await;
        assert_eq!(store.objects(), Vec::<String>::new(), "{what}: nothing stored");
    }

    // Not multipart at all.
    let json = app
        .post_json(
            &attachments_path(&invoice),
            &serde_json::json!({"file": "x"}),
            Some(&token),
        )
        .await;
    assert_error(json, 415, "unsupported_media_type").await;

    // Exactly MAX_UPLOAD_BYTES is accepted; the next file would pass the 1.5 MiB quota.
    attach(&app, &token, &invoice, "limit.pdf", &at_limit).await;
    let over_quota = upload(
        &app,
        &token,
        &invoice,
        multipart(&[file_part("more.pdf", "application/pdf", &pdf(600 * 1024))]),
    )
    .await;
    assert_error(over_quota, 409, "quota_exceeded").await;
    assert_eq!(store.objects().len(), 1, "only the accepted file");
    assert_eq!(attachment_count(&app, &token, &invoice).await, 1);
    app.stop().await;
}

#[tokio::test]
async fn file_names_are_metadata_made_safe() {
    let store = Store::disk();
    let (app, token, invoice) = start_on(&store, "names@example.com").await;
    let long = format!("{}.pdf", "n".repeat(10_000));
    for (given, kept) in [
        ("../../etc/passwd.pdf", "passwd.pdf"),
        ("..\\..\\windows\\evil.pdf", "evil.pdf"),
        ("bill\u{202E}fdp.exe", "billfdp.exe"),
        ("tab\there.pdf", "tabhere.pdf"),
        ("..", "file"),
    ] {
        let attachment = attach(&app, &token, &invoice, given, &pdf(100)).await;
        assert_eq!(attachment["filename"], kept, "{given:?}");
    }
    let attachment = attach(&app, &token, &invoice, &long, &pdf(100)).await;
    assert_eq!(attachment["filename"].as_str().unwrap().len(), 255);
    // A NUL cannot be in a part's header at all: the body is malformed (the name rules would
    // drop it, as they drop every control character).
    let stored = store.objects().len();
    let nul = upload(
        &app,
        &token,
        &invoice,
        multipart(&[file_part("nul\0byte.pdf", "application/pdf", &pdf(100))]),
    )
    .await;
    assert_error(nul, 422, "validation_failed").await;
    assert_eq!(store.objects().len(), stored);
    // Whatever the names, the keys are the service's own.
    for object in store.objects() {
        let id = object.strip_prefix("attachments/").expect("under attachments/");
        assert!(uuid::Uuid::parse_str(id).is_ok(), "{object}");
    }
    app.stop().await;
}

#[tokio::test]
async fn another_users_invoice_or_attachment_and_malformed_ids_are_404() {
    let store = Store::disk();
    let app = TestApp::spawn_with(Backend::Sqlite, |c| c.storage = store.config()).await;
    let (alice, invoice) = owner(&app, "alice@example.com").await;
    let (mallory, own_invoice) = owner(&app, "mallory@example.com").await;
    let attachment = attach(&app, &alice, &invoice, "private.pdf", &pdf(1000)).await;
    let path = format!("{}/{}", attachments_path(&invoice), attachment["id"].as_str().unwrap());
    assert_error(app.get(&path, Some(&mallory)).await, 404, "not_found").await;
    assert_error(app.delete(&path, Some(&mallory)).await, 404, "not_found").await;
    assert_error(
        app.get(&attachments_path(&invoice), Some(&mallory)).await,
        404,
        "not_found",
    )
    .await;
    let upload_there = upload(
        &app,
        &mallory,
        &invoice,
        multipart(&[file_part("x.pdf", "application/pdf", &pdf(100))]),
    )
    .await;
    assert_error(upload_there, 404, "not_found").await;
    // Alice's attachment id under Mallory's own invoice is still not Mallory's.
    let crossed = format!(
        "{}/{}",
        attachments_path(&own_invoice),
        attachment["id"].as_str().unwrap()
    );
    assert_error(app.get(&crossed, Some(&mallory)).await, 404, "not_found").await;
    for malformed in [
        format!("{}/not-a-uuid", attachments_path(&invoice)),
        format!("{}/%FF", attachments_path(&invoice)),
        "/api/v1/invoices/nope/attachments".to_owned(),
    ] {
        assert_error(app.get(&malformed, Some(&alice)).await, 404, "not_found").await;
    }
    assert_eq!(app.get(&attachments_path(&invoice), None).await.status(), 401);
    assert_eq!(store.objects().len(), 1);
    app.stop().await;
}

#[tokio::test]
async fn storage_down_is_503_with_nothing_half_visible_and_readyz_stays_ready() {
    let mut server = S3Server::start().await;
    let app = TestApp::spawn_with(Backend::Sqlite, |c| c.storage = server.storage("tenant-a")).await;
    let (token, invoice) = owner(&app, "down@example.com").await;
    let kept = attach(&app, &token, &invoice, "before.pdf", &pdf(1000)).await;
    assert_eq!(
        server.objects(),
        [format!("tenant-a/attachments/{}", kept["id"].as_str().unwrap())],
        "STORAGE_URL's prefix comes first"
    );
    let readiness = wait_for_storage_status(&app, "ok").await;
    assert_eq!(readiness["status"], "ready");

    server.stop();
    let started = Instant::now();
    let response = upload(
        &app,
        &token,
        &invoice,
        multipart(&[file_part("during.pdf", "application/pdf", &pdf(1000))]),
    )
    .await;
    assert!(response.headers().get("retry-after").is_some());
    assert_error(response, 503, "service_unavailable").await;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "bounded retries: {:?}",
        started.elapsed()
    );
    let path = format!("{}/{}", attachments_path(&invoice), kept["id"].as_str().unwrap());
    assert_error(app.get(&path, Some(&token)).await, 503, "service_unavailable").await;
    let list: Value = app
        .get(&attachments_path(&invoice), Some(&token))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        list["items"].as_array().unwrap().len(),
        1,
        "no row for the failed upload"
    );
    let readiness = wait_for_storage_status(&app, "error").await;
    assert_eq!(readiness["status"], "ready", "storage does not fail readiness");

    server.resume().await;
    wait_for_storage_status(&app, "ok").await;
    assert_eq!(app.get(&path, Some(&token)).await.status(), 200);
    assert_eq!(server.objects().len(), 1);
    app.stop().await;
}

async fn quota_race(backend: Backend) {
    let store = Store::s3().await;
    let file_size = 300 * 1024;
    let app = TestApp::spawn_with(backend, |c| {
        c.storage = store.config();
        c.uploads.quota_bytes_per_user = 3 * file_size as u64 + 1000;
    })
    .await;
    let (token, invoice) = owner(&app, "racer@example.com").await;
    let uploads = (0..8u8).map(|i| {
        let body = multipart(&[file_part(
            "race.pdf",
            "application/pdf",
            &file_of(b"%PDF-1.4\n", file_size, i),
        )]);
        upload(&app, &token, &invoice, body)
    });
    let statuses: Vec<u16> = futures_util::future::join_all(uploads)
        .await
        .iter()
        .map(|r| r.status().as_u16())
        .collect();
    assert_eq!(statuses.iter().filter(|s| **s == 201).count(), 3, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 409).count(), 5, "{statuses:?}");
    assert_eq!(store.objects().len(), 3, "a refused upload's object is deleted");
    app.stop().await;
}

#[tokio::test]
async fn racing_uploads_cannot_pass_the_quota_on_sqlite() {
    quota_race(Backend::Sqlite).await;
}

#[tokio::test]
#[cfg_attr(not(test_postgres), ignore = "needs TEST_DATABASE_URL")]
async fn racing_uploads_cannot_pass_the_quota_on_postgres() {
    quota_race(Backend::Postgres(postgres_admin())).await;
}

#[tokio::test]
async fn a_client_that_stops_mid_upload_times_out_and_nothing_is_kept() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    for store in [Store::s3().await, Store::disk()] {
        let app = TestApp::spawn_with(Backend::Sqlite, |c| {
            c.storage = store.config();
            c.request_timeout = Duration::from_secs(2);
        })
        .await;
        let (token, invoice) = owner(&app, "staller@example.com").await;
        // Past one 5 MiB part, so the S3 upload is a multipart one when the client stalls.
        let body = multipart(&[file_part("slow.pdf", "application/pdf", &pdf(8 * 1024 * 1024))]);
        let mut socket = tokio::net::TcpStream::connect(app.addr).await.unwrap();
        let head = format!(
            "POST {} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\n\
             Content-Type: multipart/form-data; boundary={BOUNDARY}\r\nContent-Length: {}\r\n\r\n",
            attachments_path(&invoice),
            body.len()
        );
        socket.write_all(head.as_bytes()).await.unwrap();
        socket.write_all(&body[..6 * 1024 * 1024 + 1000]).await.unwrap();
        let mut answer = vec![0u8; 4096];
        let read = tokio::time::timeout(Duration::from_secs(10), socket.read(&mut answer))
            .await
            .expect("answered within the request timeout")
            .unwrap();
        let answer = String::from_utf8_lossy(&answer[..read]);
        assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
        assert!(answer.contains("\"timeout\""), "{answer}");
        drop(socket);
        // The cut-off multipart upload is aborted in the background: give it a moment.
        wait_until(Duration::from_secs(5), || store.objects().is_empty()).await;
        assert_eq!(store.objects(), Vec::<String>::new(), "nothing kept, no parts left");
        assert_eq!(attachment_count(&app, &token, &invoice).await, 0);
        app.stop().await;
    }
}

#[tokio::test]
async fn the_sweep_deletes_only_old_objects_without_a_row_under_attachments() {
    let store = Store::disk();
    let (app, token, invoice) = start_on(&store, "sweep@example.com").await;
    let kept = attach(&app, &token, &invoice, "kept.pdf", &pdf(100)).await;
    let kept_key = format!("attachments/{}", kept["id"].as_str().unwrap());
    let Store::Disk(dir) = &store else { unreachable!() };
    let orphan_old = format!("attachments/{}", uuid::Uuid::now_v7());
    let orphan_new = format!("attachments/{}", uuid::Uuid::now_v7());
    let backup = "backups/2026-12-01.db.gz".to_owned();
    for key in [&orphan_old, &orphan_new, &backup] {
        let path = dir.path().join(key);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, b"left behind").unwrap();
    }
    for key in [&orphan_old, &kept_key, &backup] {
        store.age(key, Duration::from_secs(2 * 3600));
    }
    let deleted = attachments::sweep_orphans(app.state.database().unwrap(), &app.state.storage)
        .await
        .unwrap();
    assert_eq!(deleted, 1);
    let mut expected = vec![backup, kept_key, orphan_new];
    expected.sort();
    assert_eq!(store.objects(), expected);
    app.stop().await;
}

#[tokio::test]
async fn the_openapi_document_describes_the_multipart_upload() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let doc: Value = app.get("/openapi.json", None).await.json().await.unwrap();
    let operation = &doc["paths"]["/api/v1/invoices/{id}/attachments"]["post"];
    let schema = &operation["requestBody"]["content"]["multipart/form-data"]["schema"];
    assert!(!schema.is_null(), "{operation}");
    let schema = match schema.get("$ref").and_then(Value::as_str) {
        Some(reference) => &doc["components"]["schemas"][reference.rsplit('/').next().unwrap()],
        None => schema,
    };
    assert_eq!(schema["properties"]["file"]["format"], "binary", "{schema}");
    for status in ["201", "409", "413", "415", "422"] {
        assert!(operation["responses"][status].is_object(), "{status}");
    }
    app.stop().await;
}

/// A memory figure of process `pid` from /proc (`VmHWM` the peak, `VmRSS` now), in bytes.
fn memory(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    let line = status.lines().find(|l| l.starts_with(field)).expect("field");
    let kb: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kb * 1024
}

/// Resets the peak to the current RSS and returns that (Linux's `clear_refs`, value 5): the
/// signup's password hash must not hide what the upload takes.
fn reset_peak_rss(pid: u32) -> u64 {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").expect("clear_refs");
    memory(pid, "VmRSS:")
}

/// Chunk `i` of a large generated PDF: deterministic, so its hash can be computed apart.
fn large_chunk(i: usize) -> Vec<u8> {
    let mut chunk = file_of(b"", 1 << 20, i as u8);
    if i == 0 {
        chunk[..9].copy_from_slice(b"%PDF-1.7\n");
    }
    chunk
}

#[tokio::test(flavor = "multi_thread")]
async fn a_48_mib_upload_streams_through_a_server_process_in_bounded_memory_and_8_parallel_uploads_are_intact() {
    const CHUNKS: usize = 48;
    let s3 = S3Server::start().await;
    let mut env: Vec<(&str, String)> = s3.env();
    env.extend([
        ("MAX_UPLOAD_BYTES", (64u64 << 20).to_string()),
        ("UPLOAD_QUOTA_BYTES_PER_USER", (1u64 << 30).to_string()),
        ("REQUEST_TIMEOUT_SECS", "300".to_owned()),
        ("RATE_LIMIT_UPLOAD", "off".to_owned()),
        ("LOG_LEVEL", "warn".to_owned()),
    ]);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let server = crate::cli::start_server(&env);
    let base = format!("http://127.0.0.1:{}", server.port);
    let client = http_client();
    let signup: Value = client
        .post(format!("{base}/api/v1/auth/signup"))
        .json(&serde_json::json!({"email": "big@example.com", "password": PASSWORD}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = signup["token"].as_str().expect("token").to_owned();
    let invoice: Value = client
        .post(format!("{base}/api/v1/invoices"))
        .bearer_auth(&token)
        .json(&serde_json::json!({"customer_name": "Acme", "amount_cents": 100, "currency": "USD"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let url = format!("{base}{}", attachments_path(invoice["id"].as_str().unwrap()));
    let send = |body: reqwest::Body| {
        client
            .post(&url)
            .bearer_auth(&token)
            .header("content-type", format!("multipart/form-data; boundary={BOUNDARY}"))
            .body(body)
            .send()
    };

    // Warm up (connections, pools, the first multipart upload), then measure the peak.
    let warm = send(multipart(&[file_part("warm.pdf", "application/pdf", &pdf(6 << 20))]).into())
        .await
        .unwrap();
    assert_eq!(warm.status(), 201);
    let before = reset_peak_rss(server.child.id());

    let head = format!(
        "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.pdf\"\r\nContent-Type: application/pdf\r\n\r\n"
    );
    let tail = format!("\r\n--{BOUNDARY}--\r\n");
    let mut hasher = Sha256::new();
    (0..CHUNKS).for_each(|i| hasher.update(large_chunk(i)));
    let expected = format!("{:x}", hasher.finalize());
    let pieces = std::iter::once(head.into_bytes())
        .chain((0..CHUNKS).map(large_chunk))
        .chain(std::iter::once(tail.into_bytes()))
        .map(Ok::<_, std::io::Error>);
    let response = send(reqwest::Body::wrap_stream(futures_util::stream::iter(pieces)))
        .await
        .unwrap();
    let status = response.status();
    let big: Value = response.json().await.unwrap();
    assert_eq!(status, 201, "{big}");
    assert_eq!(big["size_bytes"], CHUNKS << 20);
    assert_eq!(big["sha256"], expected.as_str());
    let grown = memory(server.child.id(), "VmHWM:").saturating_sub(before);
    assert!(
        grown < 32 << 20,
        "a 48 MiB upload raised the peak RSS by {} MiB",
        grown >> 20
    );

    // Eight at once, each different, each stored whole.
    let files: Vec<Vec<u8>> = (0..8u8)
        .map(|i| file_of(b"%PDF-1.5\n", (3 << 20) + i as usize * 1000, i))
        .collect();
    let uploads = files
        .iter()
        .map(|bytes| send(multipart(&[file_part("parallel.pdf", "application/pdf", bytes)]).into()));
    for (response, bytes) in futures_util::future::join_all(uploads).await.into_iter().zip(&files) {
        let response = response.unwrap();
        assert_eq!(response.status(), 201);
        let attachment: Value = response.json().await.unwrap();
        assert_eq!(attachment["sha256"], sha256_hex(bytes));
        let download = client
            .get(format!("{url}/{}", attachment["id"].as_str().unwrap()))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(
            sha256_hex(&download.bytes().await.unwrap()),
            sha256_hex(bytes),
            "downloaded intact"
        );
    }
    assert_eq!(s3.objects().len(), 10);
    assert_eq!(s3.pending_parts(), 0);
}

#[tokio::test]
async fn a_slow_store_is_bounded_by_the_request_timeout_and_leaves_no_row() {
    let server = S3Server::start().await;
    let proxy = TcpProxy::start(([127, 0, 0, 1], server.port).into(), Duration::from_secs(10)).await;
    let mut storage = server.storage("");
    if let StorageConfig::S3(s3) = &mut storage {
        s3.endpoint = Some(format!("http://{}", proxy.addr));
    }
    let app = TestApp::spawn_with(Backend::Sqlite, |c| {
        c.storage = storage;
        c.request_timeout = Duration::from_secs(2);
    })
    .await;
    let (token, invoice) = owner(&app, "slow@example.com").await;
    let started = Instant::now();
    let response = upload(
        &app,
        &token,
        &invoice,
        multipart(&[file_part("slow.pdf", "application/pdf", &pdf(1000))]),
    )
    .await;
    assert_error(response, 503, "timeout").await;
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    // The store may have the object (its answer was what came late): without a row it is
    // never listed or served, and the sweep deletes it.
    assert_eq!(attachment_count(&app, &token, &invoice).await, 0);
    app.stop().await;
}
