//! The core's file storage (docs/files.md), without the example domain: the writer against a
//! real S3 API and a directory, an upload route of the test's own built from `uploads`, and
//! `/readyz`'s storage check.

use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::response::Response;
use axum::routing::post;
use object_store::path::Path;
use shipshape::config::StorageConfig;
use shipshape::error::ApiError;
use shipshape::state::AppState;
use shipshape::storage::Storage;
use shipshape::uploads::{self, FileUpload, Rules};

use crate::helpers::*;
use crate::infra::{S3Server, files_under};

const PART: usize = 5 << 20;

#[tokio::test]
async fn a_finished_writer_stores_the_object_and_an_abandoned_one_leaves_nothing() {
    let server = S3Server::start().await;
    let dir = tempfile::tempdir().unwrap();
    for (config, objects) in [
        (
            server.storage(""),
            Box::new(|| server.objects()) as Box<dyn Fn() -> Vec<String>>,
        ),
        (
            StorageConfig::Local(dir.path().to_owned()),
            Box::new(|| files_under(dir.path())),
        ),
    ] {
        let storage = Storage::open(&config).unwrap();
        storage.probe().await.expect("the probe writes, reads and deletes");
        // Past one part: a multipart upload on S3.
        let bytes: Vec<u8> = (0..PART + 1000).map(|i| (i % 251) as u8).collect();
        let mut writer = storage.writer(Path::from("attachments/whole"));
        for chunk in bytes.chunks(64 * 1024) {
            writer.write(chunk.to_vec().into()).await.unwrap();
        }
        writer.finish().await.unwrap();
        let (size, stream) = storage.read(&Path::from("attachments/whole")).await.unwrap();
        assert_eq!(size, bytes.len() as u64);
        let chunks: Vec<axum::body::Bytes> = futures_util::TryStreamExt::try_collect(stream).await.unwrap();
        let read = chunks.concat();
        assert_eq!(read, bytes);

        let mut abandoned = storage.writer(Path::from("attachments/abandoned"));
        for chunk in bytes.chunks(64 * 1024) {
            abandoned.write(chunk.to_vec().into()).await.unwrap();
        }
        drop(abandoned);
        wait_until(Duration::from_secs(5), || {
            objects() == ["attachments/whole"] && server.pending_parts() == 0
        })
        .await;
        assert_eq!(objects(), ["attachments/whole"], "the abandoned upload left nothing");
        assert_eq!(server.pending_parts(), 0, "its parts were aborted");

        assert!(matches!(
            storage.read(&Path::from("attachments/none")).await,
            Err(ApiError::NotFound)
        ));
        storage.delete(&Path::from("attachments/whole")).await.unwrap();
        storage
            .delete(&Path::from("attachments/whole"))
            .await
            .expect("deleting a missing object succeeds");
        assert_eq!(objects(), Vec::<String>::new());
    }
}

/// An upload route of the test's own: PNG only, at most 1 KiB, stored under `avatars/{user}`
/// and served back from there.
fn avatar_routes(_: &AppState) -> Router<AppState> {
    async fn put_avatar(
        State(state): State<AppState>,
        user: shipshape::auth::AuthUser,
        form: FileUpload,
    ) -> Result<String, ApiError> {
        let rules = Rules {
            max_bytes: 1024,
            remaining_quota: u64::MAX,
            allowed: &["image/png"],
            allowed_names: "a PNG image, please",
        };
        let stored = form
            .store(&state.storage, Path::from(format!("avatars/{}", user.id)), &rules)
            .await?;
        Ok(format!("{} {} {}", stored.filename, stored.content_type, stored.size))
    }
    async fn get_avatar(State(state): State<AppState>, user: shipshape::auth::AuthUser) -> Result<Response, ApiError> {
        let (size, bytes) = state.storage.read(&Path::from(format!("avatars/{}", user.id))).await?;
        uploads::download(bytes, size, "image/png", "avatar.png")
    }
    Router::new()
        .route("/api/v1/test-avatar", post(put_avatar).get(get_avatar))
        .layer(DefaultBodyLimit::max(uploads::body_limit(1024)))
}

fn form(filename: &str, bytes: &[u8]) -> (String, Vec<u8>) {
    let boundary = "core-test";
    let mut body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{filename}\"\r\n\
         Content-Type: image/png\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(bytes);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

#[tokio::test]
async fn an_upload_route_of_your_own_checks_type_and_size_while_streaming_and_serves_safely() {
    let dir = tempfile::tempdir().unwrap();
    let storage = StorageConfig::Local(dir.path().to_owned());
    let app = TestApp::start_with_state_routes(Backend::Sqlite, |c| c.storage = storage, avatar_routes).await;
    let token = app.signup("avatar@example.com").await;
    let post = async |(content_type, body): (String, Vec<u8>)| {
        app.client
            .post(app.url("/api/v1/test-avatar"))
            .bearer_auth(&token)
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .unwrap()
    };
    let mut png = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec();
    png.resize(1024, 7);
    let mut too_big = png.clone();
    too_big.push(0);
    assert_error(post(form("big.png", &too_big)).await, 413, "payload_too_large").await;
    assert_error(
        post(form("fake.png", b"GIF89a not a png at all")).await,
        415,
        "unsupported_media_type",
    )
    .await;
    assert_eq!(files_under(dir.path()), Vec::<String>::new(), "nothing stored");

    let stored = post(form("../me.png", &png)).await;
    assert_eq!(stored.status(), 200);
    assert_eq!(stored.text().await.unwrap(), "me.png image/png 1024");
    let served = app.get("/api/v1/test-avatar", Some(&token)).await;
    assert_eq!(served.status(), 200);
    assert_eq!(
        served.headers()["content-disposition"],
        "attachment; filename=\"avatar.png\"; filename*=UTF-8''avatar.png"
    );
    assert_eq!(served.headers()["content-security-policy"], "sandbox");
    assert_eq!(served.bytes().await.unwrap().to_vec(), png);
    app.stop().await;
}

#[tokio::test]
async fn readyz_reports_the_storage_and_stays_ready_while_it_is_down() {
    let mut server = S3Server::start().await;
    let app = TestApp::spawn_with(Backend::Sqlite, |c| c.storage = server.storage("")).await;
    assert_eq!(wait_for_storage_status(&app, "ok").await["status"], "ready");
    server.stop();
    assert_eq!(wait_for_storage_status(&app, "error").await["status"], "ready");
    server.resume().await;
    wait_for_storage_status(&app, "ok").await;
    app.stop().await;
}

#[test]
fn storage_settings_read_as_documented() {
    use shipshape::config::{Config, Settings};
    let read = |pairs: &[(&str, &str)]| {
        let mut settings = Settings::default();
        for (key, value) in pairs {
            let value = Some((*value).to_owned());
            match *key {
                "STORAGE_URL" => settings.storage_url = value,
                "BUCKET_NAME" => settings.bucket_name = value,
                "AWS_ENDPOINT_URL" => settings.aws_endpoint_url = value,
                "AWS_ENDPOINT_URL_S3" => settings.aws_endpoint_url_s3 = value,
                _ => unreachable!(),
            }
        }
        Config::from_settings(&settings, None).map(|c| c.storage)
    };
    let local = |pairs| match read(pairs) {
        Ok(StorageConfig::Local(path)) => path.display().to_string(),
        other => panic!("{other:?}"),
    };
    let s3 = |pairs| match read(pairs) {
        Ok(StorageConfig::S3(s3)) => (s3.bucket, s3.prefix, s3.endpoint, s3.region),
        other => panic!("{other:?}"),
    };
    assert_eq!(local(&[]), "data/uploads");
    assert_eq!(local(&[("STORAGE_URL", "uploads")]), "uploads");
    assert_eq!(local(&[("STORAGE_URL", "file:///srv/uploads")]), "/srv/uploads");
    assert_eq!(
        s3(&[("BUCKET_NAME", "fly-bucket")]),
        ("fly-bucket".into(), "".into(), None, "auto".into())
    );
    assert_eq!(
        s3(&[
            ("STORAGE_URL", "s3://my-bucket/app/files/"),
            ("BUCKET_NAME", "ignored"),
            ("AWS_ENDPOINT_URL", "https://e.example"),
            ("AWS_ENDPOINT_URL_S3", "https://s3.example/")
        ]),
        (
            "my-bucket".into(),
            "app/files".into(),
            Some("https://s3.example".into()),
            "auto".into()
        )
    );
    for bad in [
        &[("STORAGE_URL", "file://relative")][..],
        &[("STORAGE_URL", "s3://A_Bucket")],
        &[("STORAGE_URL", "gs://bucket")],
        &[("BUCKET_NAME", "b"), ("AWS_ENDPOINT_URL_S3", "ftp://x")],
    ] {
        assert!(read(bad).is_err(), "{bad:?}");
    }
}
