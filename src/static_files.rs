//! Static files (SPEC §8) and `shipshape compress-static`.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

/// Text types worth compressing; images and fonts are compressed already.
const COMPRESSIBLE: &[&str] = &[
    "css", "js", "mjs", "html", "svg", "json", "txt", "xml", "map", "wasm",
];
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
pub fn compress_dir(dir: &Path) -> std::io::Result<Vec<(std::path::PathBuf, Outcome)>> {
    let mut results = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(folder) = pending.pop() {
        for entry in std::fs::read_dir(&folder)? {
            let path = entry?.path();
            if path.is_dir() {
                pending.push(path);
            } else if is_compressible(&path) {
                let outcome = compress_file(&path)?;
                results.push((path, outcome));
            }
        }
    }
    results.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(results)
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
    let worth_it =
        |compressed: &[u8]| (compressed.len() as f64) <= original.len() as f64 * (1.0 - MIN_SAVING);
    let gz_path = sibling(path, "gz");
    let br_path = sibling(path, "br");
    if !worth_it(&gzip) {
        // Remove stale siblings from an earlier run, or they would be served.
        let _ = std::fs::remove_file(gz_path);
        let _ = std::fs::remove_file(br_path);
        return Ok(Outcome::NotWorthIt);
    }
    std::fs::write(&gz_path, &gzip)?;
    if worth_it(&brotli) {
        std::fs::write(&br_path, &brotli)?;
    } else {
        let _ = std::fs::remove_file(br_path);
    }
    Ok(Outcome::Written {
        gzip: gzip.len(),
        brotli: brotli.len(),
        original: original.len(),
    })
}

fn sibling(path: &Path, ext: &str) -> std::path::PathBuf {
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
                    Outcome::Written {
                        gzip,
                        brotli,
                        original,
                    } => {
                        println!(
                            "{}: {original} B → gzip {gzip} B, br {brotli} B",
                            path.display()
                        )
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
