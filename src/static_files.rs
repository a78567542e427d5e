//! Static files (docs/api.md, "Security notes"), the HTML error pages for browsers, and
//! `shipshape compress-static`.

use std::convert::Infallible;
use std::io::Write;
use std::path::{Component, Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tower::Service;
use tower_http::services::{ServeDir, ServeFile};

use crate::config::Config;
use crate::error::ApiError;
use crate::middleware::{BoxResponseFuture, Middleware, MiddlewareLayer};

/// `/` (the landing page) and `/static/*` from `STATIC_DIR`, with precompressed `.br`/`.gz`
/// siblings, ETag/Last-Modified and 304s (all from tower-http), and our cache policy. Paths
/// for which `hidden` says yes answer 404 as if absent (the API reference's assets while
/// `API_DOCS` is off).
pub fn router<S: Clone + Send + Sync + 'static>(config: &Config, hidden: fn(&str) -> bool) -> Router<S> {
    let files = ServeDir::new(&config.static_dir)
        .precompressed_br()
        .precompressed_gzip()
        .append_index_html_on_directories(false);
    let index = ServeFile::new(config.static_dir.join("index.html"))
        .precompressed_br()
        .precompressed_gzip();
    let max_age = HeaderValue::from_str(&format!("public, max-age={}", config.static_max_age_secs))
        .unwrap_or_else(|_| HeaderValue::from_static("public, max-age=3600"));
    let guard = StaticGuard(Arc::new(GuardSettings {
        max_age,
        // Resolved once; a missing folder serves nothing.
        root: std::fs::canonicalize(&config.static_dir).ok(),
        hidden,
    }));
    Router::new()
        // A route (not `nest_service`) so logs and metrics name it `/static/{*path}`.
        .route_service("/static/{*path}", files)
        .route_service("/", index)
        .layer(MiddlewareLayer(guard))
}

const IMMUTABLE: HeaderValue = HeaderValue::from_static("public, max-age=31536000, immutable");

/// The middleware in front of the files: refuses dotfiles, anything that decodes to `..`,
/// hidden paths and files whose real path is outside the folder, then sets `Cache-Control`.
/// A [`Middleware`], not `from_fn`, which clones the file server and boxes it on every call:
/// on the cheapest request there is, that showed (bench/RESULTS.md, "Static files and the
/// ping before each query").
#[derive(Clone)]
struct StaticGuard(Arc<GuardSettings>);

struct GuardSettings {
    max_age: HeaderValue,
    root: Option<PathBuf>,
    hidden: fn(&str) -> bool,
}

impl Middleware for StaticGuard {
    fn handle<S>(&self, inner: &mut S, mut req: Request) -> BoxResponseFuture
    where
        S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
        S::Future: Send + 'static,
    {
        let Some(policy) = self.admit(&mut req) else {
            return Box::pin(std::future::ready(Ok(ApiError::NotFound.into_response())));
        };
        let below = inner.call(req);
        Box::pin(async move {
            let mut response = below.await?;
            if response.status().is_success() || response.status() == StatusCode::NOT_MODIFIED {
                response.headers_mut().insert(header::CACHE_CONTROL, policy);
            }
            Ok(response)
        })
    }
}

impl StaticGuard {
    /// The file's `Cache-Control` when it may be served, with the request's path made the one
    /// ServeDir reads; `None` for a 404.
    fn admit(&self, req: &mut Request) -> Option<HeaderValue> {
        let settings = &*self.0;
        let path = req.uri().path();
        let decoded = percent_encoding::percent_decode_str(path).decode_utf8_lossy();
        if decoded.split(['/', '\\']).any(|segment| segment.starts_with('.')) || (settings.hidden)(path) {
            return None;
        }
        let relative = decoded.strip_prefix("/static/").unwrap_or("index.html");
        let root = settings.root.as_deref()?;
        // Longer than Linux takes (a 255-byte name, a 4096-byte path, with room for `.br`) names
        // no file; opening it would fail with ENAMETOOLONG, which ServeDir answers with a 500.
        let too_long =
            root.as_os_str().len() + relative.len() + 4 >= 4096 || relative.split('/').any(|name| name.len() + 3 > 255);
        let accepts = |encoding: &str| mentions(req.headers(), header::ACCEPT_ENCODING, encoding);
        let variants = [("", true), (".br", accepts("br")), (".gz", accepts("gzip"))];
        if too_long || !resolves_inside(root, relative, &variants) {
            return None;
        }
        let file_name = relative.rsplit('/').next().unwrap_or_default();
        let policy = match has_content_hash(file_name) {
            true => IMMUTABLE,
            false => settings.max_age.clone(),
        };
        // ServeDir resolves paths relative to STATIC_DIR: hand it `/style.css`, not `/static/style.css`.
        if let Some(relative) = req
            .uri()
            .path_and_query()
            .and_then(|p| p.as_str().strip_prefix("/static"))
            && let Ok(uri) = relative.parse()
        {
            *req.uri_mut() = uri;
        }
        Some(policy)
    }
}

/// Whether the file `relative` names, with each suffix of `variants` marked served (the ones
/// ServeDir may open for this client: a `.br`/`.gz` sibling only for one that names the
/// encoding), really lives under `root` once symlinks are resolved: a link planted in the
/// folder must not serve `/etc/passwd`. A name that cannot be looked at for a reason other than being absent (a link
/// loop, a file used as a folder) is refused too. It costs one `lstat` per folder on the way
/// and per variant, on this thread: a few system calls on a local folder cost less than the
/// hop to the blocking pool they used to take (bench/RESULTS.md, "Performance of 2026-12-07").
/// Only a symlink met on the way is resolved in full.
fn resolves_inside(root: &Path, relative: &str, variants: &[(&str, bool)]) -> bool {
    let (mut folder, mut file) = (root.to_path_buf(), None);
    for component in Path::new(relative).components() {
        match component {
            Component::Normal(name) => folder.extend(file.replace(name)),
            Component::CurDir => {}
            // `/static//etc/passwd` and `..` name nothing under the folder.
            _ => return false,
        }
    }
    let Some(file) = file else {
        return true; // the folder itself, which is never served
    };
    // The folders on the way, once for every variant.
    let mut walked = root.to_path_buf();
    for name in folder.strip_prefix(root).into_iter().flat_map(Path::components) {
        walked.push(name);
        match inside(root, &walked) {
            Some(true) => {}
            Some(false) => return false,
            None => return true, // absent: nothing to serve
        }
    }
    variants.iter().filter(|(_, served)| *served).all(|(suffix, _)| {
        let mut name = file.to_owned();
        name.push(suffix);
        inside(root, &folder.join(name)) != Some(false)
    })
}

/// Whether `path` (under `root`, its parent already checked) stays inside `root`: `None` when
/// it does not exist. Only a symlink is resolved.
fn inside(root: &Path, path: &Path) -> Option<bool> {
    let resolved = match std::fs::symlink_metadata(path) {
        Ok(metadata) if !metadata.file_type().is_symlink() => return Some(true),
        Ok(_) => std::fs::canonicalize(path).map(|real| real.starts_with(root)),
        Err(error) => Err(error),
    };
    match resolved {
        Ok(inside) => Some(inside),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => None,
        Err(_) => Some(false),
    }
}

/// Whether any `name` header mentions `word`, in any case: a superset of what a parser reads.
fn mentions(headers: &HeaderMap, name: header::HeaderName, word: &str) -> bool {
    headers.get_all(name).iter().any(|value| {
        value
            .as_bytes()
            .windows(word.len())
            .any(|w| w.eq_ignore_ascii_case(word.as_bytes()))
    })
}

/// `app.3f9a1c2e.css`: a name segment of 8+ hex digits means the content fixes the name,
/// so the file can be cached for a year.
fn has_content_hash(file_name: &str) -> bool {
    let parts = file_name.split('.').count();
    parts >= 3
        && file_name
            .split('.')
            .skip(1)
            .take(parts - 2)
            .any(|p| p.len() >= 8 && p.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// `404.html` and `500.html` from `STATIC_DIR`, read once at start (built-in pages when missing).
struct ErrorPages {
    // `Bytes`, so each response shares the page instead of copying it.
    not_found: Bytes,
    server_error: Bytes,
}

const BUILTIN_404: &str = "<!doctype html><html lang=\"en\"><meta charset=\"utf-8\"><title>Not found</title>\
    <h1>Not found</h1><p><a href=\"/\">Home</a></p></html>";
const BUILTIN_500: &str = "<!doctype html><html lang=\"en\"><meta charset=\"utf-8\"><title>Server error</title>\
    <h1>Something went wrong</h1><p>Please try again later.</p></html>";

impl ErrorPages {
    fn load(static_dir: &Path) -> ErrorPages {
        let read = |name: &str, builtin: &'static str| {
            std::fs::read(static_dir.join(name)).map_or(Bytes::from_static(builtin.as_bytes()), Bytes::from)
        };
        ErrorPages {
            not_found: read("404.html", BUILTIN_404),
            server_error: read("500.html", BUILTIN_500),
        }
    }

    /// The HTML version of an error response for a browser, keeping status and headers;
    /// statuses without a page of their own stay JSON.
    fn render(&self, response: Response) -> Response {
        let page = match response.status() {
            StatusCode::NOT_FOUND => self.not_found.clone(),
            status if status.is_server_error() => self.server_error.clone(),
            _ => return response,
        };
        let (mut parts, _) = response.into_parts();
        parts.headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        );
        parts.headers.remove(header::CONTENT_LENGTH);
        Response::from_parts(parts, Body::from(page))
    }
}

/// The middleware that gives a browser asking for a page outside `/api/` its error as an
/// HTML page instead of JSON.
#[derive(Clone)]
pub struct HtmlErrorPages(Arc<ErrorPages>);

impl HtmlErrorPages {
    pub fn layer(static_dir: &Path) -> MiddlewareLayer<HtmlErrorPages> {
        MiddlewareLayer(HtmlErrorPages(Arc::new(ErrorPages::load(static_dir))))
    }
}

impl Middleware for HtmlErrorPages {
    fn handle<S>(&self, inner: &mut S, req: Request) -> BoxResponseFuture
    where
        S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
        S::Future: Send + 'static,
    {
        let wants_html = !req.uri().path().starts_with("/api/") && prefers_html(req.headers().get(header::ACCEPT));
        let below = inner.call(req);
        if !wants_html {
            return Box::pin(below);
        }
        let pages = self.0.clone();
        Box::pin(async move {
            let response = below.await?;
            Ok(match response.status().as_u16() >= 400 {
                true => pages.render(response),
                false => response,
            })
        })
    }
}

/// Whether an `Accept` header prefers HTML over JSON, as a browser's navigation does.
fn prefers_html(accept: Option<&HeaderValue>) -> bool {
    let Some(accept) = accept.and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let quality = |wanted: &[&str]| {
        accept
            .split(',')
            .filter_map(|item| {
                let mut parts = item.split(';').map(str::trim);
                let media = parts.next()?;
                let q = parts
                    .find_map(|p| p.strip_prefix("q="))
                    .and_then(|q| q.parse::<f32>().ok())
                    .unwrap_or(1.0);
                wanted.contains(&media).then_some(q)
            })
            .fold(0.0_f32, f32::max)
    };
    let html = quality(&["text/html"]);
    html > 0.0 && html > quality(&["application/json", "*/*"])
}

/// Text types worth compressing; images and fonts are compressed already.
const COMPRESSIBLE: &[&str] = &["css", "js", "mjs", "html", "svg", "json", "txt", "xml", "map", "wasm"];
/// A compressed copy is kept only if it saves at least 5 % (as whitenoise does).
const MIN_SAVING: f64 = 0.05;

/// What `compress-static` did to one file.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Written {
        gzip: usize,
        brotli: usize,
        original: usize,
    },
    NotWorthIt,
}

/// Writes `.gz` and `.br` siblings for every compressible file under `dir`, recursively.
/// Only files whose real path is inside `dir`: a symlink out of it would publish what it
/// points to. Linked folders are not entered (which also rules out loops); the files in them
/// that are inside `dir` are reached through their real path.
pub fn compress_dir(dir: &Path) -> std::io::Result<Vec<(PathBuf, Outcome)>> {
    let root = std::fs::canonicalize(dir)?;
    let mut results = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(folder) = pending.pop() {
        for entry in std::fs::read_dir(&folder)? {
            let entry = entry?;
            let path = entry.path();
            // `file_type` does not follow symlinks.
            let kind = entry.file_type()?;
            if kind.is_dir() {
                pending.push(path);
            } else if is_compressible(&path) && (kind.is_file() || links_to_file_inside(&path, &root)) {
                let outcome = compress_file(&path)?;
                results.push((path, outcome));
            }
        }
    }
    results.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(results)
}

fn links_to_file_inside(link: &Path, root: &Path) -> bool {
    std::fs::canonicalize(link).is_ok_and(|real| real.starts_with(root) && real.is_file())
}

fn is_compressible(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|ext| COMPRESSIBLE.contains(&ext.to_ascii_lowercase().as_str()))
}

fn compress_file(path: &Path) -> std::io::Result<Outcome> {
    let original = std::fs::read(path)?;
    let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gzip.write_all(&original)?;
    let gzip = gzip.finish()?;
    let mut brotli = Vec::new();
    {
        let mut writer = brotli::CompressorWriter::new(&mut brotli, 4096, 11, 22);
        writer.write_all(&original)?;
    }
    let worth_it = |compressed: &[u8]| (compressed.len() as f64) <= original.len() as f64 * (1.0 - MIN_SAVING);
    let gz_path = sibling(path, "gz");
    let br_path = sibling(path, "br");
    if !worth_it(&gzip) {
        // Remove stale siblings from an earlier run, or they would be served.
        let _ = std::fs::remove_file(gz_path);
        let _ = std::fs::remove_file(br_path);
        return Ok(Outcome::NotWorthIt);
    }
    write_new(&gz_path, &gzip)?;
    if worth_it(&brotli) {
        write_new(&br_path, &brotli)?;
    } else {
        let _ = std::fs::remove_file(br_path);
    }
    Ok(Outcome::Written {
        gzip: gzip.len(),
        brotli: brotli.len(),
        original: original.len(),
    })
}

/// Replaces `path` with a new file: a symlink planted there is removed, never written through.
fn write_new(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => return Err(error),
        _ => {}
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)?
        .write_all(contents)
}

fn sibling(path: &Path, ext: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".");
    name.push(ext);
    name.into()
}

pub fn compress_dir_command(dir: &Path) -> ExitCode {
    match compress_dir(dir) {
        Ok(results) => {
            for (path, outcome) in results {
                match outcome {
                    Outcome::Written { gzip, brotli, original } => {
                        println!("{}: {original} B → gzip {gzip} B, br {brotli} B", path.display())
                    }
                    Outcome::NotWorthIt => {
                        println!("{}: skipped (compression saves < 5 %)", path.display())
                    }
                }
            }
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("compress-static failed in {}: {error}", dir.display());
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_hash_names() {
        assert!(has_content_hash("app.3f9a1c2e.css"));
        assert!(has_content_hash("app.3f9a1c2e0b.min.js"));
        assert!(!has_content_hash("style.css"));
        assert!(!has_content_hash("app.v2.css"));
        assert!(!has_content_hash("3f9a1c2e.css"));
    }

    #[test]
    fn browsers_prefer_html_and_api_clients_do_not() {
        let browser = HeaderValue::from_static("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8");
        assert!(prefers_html(Some(&browser)));
        assert!(!prefers_html(Some(&HeaderValue::from_static("*/*"))));
        assert!(!prefers_html(Some(&HeaderValue::from_static("application/json"))));
        assert!(!prefers_html(Some(&HeaderValue::from_static(
            "application/json, text/html;q=0.5"
        ))));
        assert!(!prefers_html(None));
    }
}
