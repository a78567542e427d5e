//! Uploaded files (docs/files.md): one `file` part of a `multipart/form-data` body, streamed to
//! storage with its size bounded and its type read from its first bytes; and the response
//! that serves a stored file back safely.

use axum::body::Body;
use axum::extract::multipart::{Multipart, MultipartError};
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::stream::BoxStream;
use object_store::path::Path;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use sha2::{Digest, Sha256};

use crate::error::ApiError;
use crate::storage::Storage;

/// What a multipart body may hold beside the file's bytes (boundaries, part headers, a long
/// file name): the whole body's limit is the file's plus this.
const MULTIPART_OVERHEAD: u64 = 64 << 10;
/// Enough of a file's start to tell every allowed type (WebP's signature ends at byte 12).
const SNIFF_BYTES: usize = 16;
/// The longest file name kept, in bytes.
const MAX_FILENAME_BYTES: usize = 255;

/// The largest request body an upload route accepts for files of at most `max_file_bytes`.
pub fn body_limit(max_file_bytes: u64) -> usize {
    usize::try_from(max_file_bytes.saturating_add(MULTIPART_OVERHEAD)).unwrap_or(usize::MAX)
}

/// What one upload may be.
pub struct Rules {
    /// MAX_UPLOAD_BYTES: more is 413.
    pub max_bytes: u64,
    /// What is left of the uploader's quota: more is 409 `quota_exceeded`.
    pub remaining_quota: u64,
    /// The MIME types accepted, as detected from the content.
    pub allowed: &'static [&'static str],
    /// Said in the 415's message.
    pub allowed_names: &'static str,
}

/// A file completely stored.
pub struct StoredFile {
    /// The client's name for it, made safe (see [`safe_filename`]).
    pub filename: String,
    pub content_type: &'static str,
    pub size: u64,
    /// Lower-case hex.
    pub sha256: String,
}

/// A `multipart/form-data` body; any other content type is 415.
pub struct FileUpload(pub Multipart);

impl<S: Send + Sync> FromRequest<S> for FileUpload {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        Multipart::from_request(req, state)
            .await
            .map(FileUpload)
            .map_err(|_| ApiError::UnsupportedMediaType("expected Content-Type: multipart/form-data"))
    }
}

impl FileUpload {
    /// Streams the one part named `file` to `key`, checking it on the way. The object exists
    /// once this returns `Ok`; on any error nothing is left under `key`.
    pub async fn store(self, storage: &Storage, key: Path, rules: &Rules) -> Result<StoredFile, ApiError> {
        let FileUpload(mut multipart) = self;
        let mut field = match multipart.next_field().await.map_err(unreadable)? {
            Some(field) if field.name() == Some("file") => field,
            Some(_) => {
                return Err(ApiError::validation(
                    "file",
                    "send one part, named `file`, and nothing else",
                ));
            }
            None => return Err(ApiError::validation("file", "a part named `file` is required")),
        };
        let filename = safe_filename(field.file_name().unwrap_or_default());
        let mut writer = storage.writer(key);
        let mut hasher = Sha256::new();
        let mut size: u64 = 0;
        let mut head = Vec::with_capacity(SNIFF_BYTES);
        let mut content_type = None;
        while let Some(chunk) = field.chunk().await.map_err(unreadable)? {
            size += chunk.len() as u64;
            if size > rules.max_bytes {
                return Err(ApiError::PayloadTooLarge);
            }
            if size > rules.remaining_quota {
                return Err(ApiError::QuotaExceeded);
            }
            hasher.update(&chunk);
            // Decided before the first byte can reach storage (the writer holds a whole part).
            if content_type.is_none() {
                let wanted = (SNIFF_BYTES - head.len()).min(chunk.len());
                head.extend_from_slice(&chunk[..wanted]);
                if head.len() == SNIFF_BYTES {
                    content_type = Some(sniff(&head, rules)?);
                }
            }
            writer.write(chunk).await?;
        }
        if size == 0 {
            return Err(ApiError::validation("file", "the file is empty"));
        }
        let content_type = match content_type {
            Some(known) => known,
            None => sniff(&head, rules)?,
        };
        drop(field);
        if multipart.next_field().await.map_err(unreadable)?.is_some() {
            return Err(ApiError::validation(
                "file",
                "send one part, named `file`, and nothing else",
            ));
        }
        writer.finish().await?;
        Ok(StoredFile {
            filename,
            content_type,
            size,
            sha256: format!("{:x}", hasher.finalize()),
        })
    }
}

/// The type the content's first bytes say, if it is one of the allowed.
fn sniff(head: &[u8], rules: &Rules) -> Result<&'static str, ApiError> {
    infer::get(head)
        .map(|kind| kind.mime_type())
        .and_then(|mime| rules.allowed.iter().copied().find(|allowed| *allowed == mime))
        .ok_or(ApiError::UnsupportedMediaType(rules.allowed_names))
}

/// A body that ended early or is not valid multipart is 422; one over the body limit is 413.
fn unreadable(error: MultipartError) -> ApiError {
    match error.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge,
        _ => ApiError::validation("file", "the multipart body is malformed or incomplete"),
    }
}

/// The client's file name as metadata: its last path component, without control or
/// bidirectional-override characters (U+202E makes `evil[U+202E]fdp.exe` read as `evilexe.pdf`), without
/// leading dots, at most 255 bytes; `file` when nothing is left.
pub fn safe_filename(name: &str) -> String {
    let base = name.rsplit(['/', '\\']).next().unwrap_or_default();
    let kept: String = base
        .chars()
        .filter(|c| !c.is_control() && !matches!(c, '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}'))
        .collect();
    let mut name = kept.trim().trim_start_matches('.').trim_start();
    if name.len() > MAX_FILENAME_BYTES {
        let end = (0..=MAX_FILENAME_BYTES)
            .rev()
            .find(|&i| name.is_char_boundary(i))
            .unwrap_or(0);
        name = &name[..end];
    }
    match name.is_empty() {
        true => "file".to_owned(),
        false => name.to_owned(),
    }
}

/// Characters RFC 8187 lets through unencoded in `filename*`.
const ATTR_CHAR: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'!')
    .remove(b'#')
    .remove(b'$')
    .remove(b'&')
    .remove(b'+')
    .remove(b'-')
    .remove(b'.')
    .remove(b'^')
    .remove(b'_')
    .remove(b'`')
    .remove(b'|')
    .remove(b'~');

/// A stored file as a download: streamed, saved rather than shown (`attachment`), never
/// sniffed into another type, sandboxed if opened anyway, and kept out of shared caches.
pub fn download(
    bytes: BoxStream<'static, object_store::Result<axum::body::Bytes>>,
    size: u64,
    content_type: &str,
    filename: &str,
) -> Result<Response, ApiError> {
    let ascii: String = filename
        .chars()
        .map(|c| match c {
            ' '..='~' if c != '"' && c != '\\' => c,
            _ => '_',
        })
        .collect();
    let disposition = format!(
        "attachment; filename=\"{ascii}\"; filename*=UTF-8''{}",
        utf8_percent_encode(filename, ATTR_CHAR)
    );
    let header = |value: &str| HeaderValue::from_str(value).map_err(|e| ApiError::Internal(e.into()));
    Ok((
        [
            (header::CONTENT_TYPE, header(content_type)?),
            (header::CONTENT_LENGTH, HeaderValue::from(size)),
            (header::CONTENT_DISPOSITION, header(&disposition)?),
            (header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
            (header::CONTENT_SECURITY_POLICY, HeaderValue::from_static("sandbox")),
            (header::CACHE_CONTROL, HeaderValue::from_static("private, no-store")),
        ],
        Body::from_stream(bytes),
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_lose_paths_controls_and_overrides_and_stay_short() {
        assert_eq!(safe_filename("../../etc/passwd"), "passwd");
        assert_eq!(safe_filename("C:\\Users\\me\\receipt.pdf"), "receipt.pdf");
        assert_eq!(safe_filename("a\u{0}b\r\nc.pdf"), "abc.pdf");
        assert_eq!(safe_filename("evil\u{202E}fdp.exe"), "evilfdp.exe");
        assert_eq!(safe_filename(".."), "file");
        assert_eq!(safe_filename(""), "file");
        let long = "é".repeat(5000);
        let kept = safe_filename(&long);
        assert!(kept.len() <= 255 && kept.len() >= 254, "{}", kept.len());
    }
}
