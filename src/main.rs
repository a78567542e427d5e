use std::process::ExitCode;

fn main() -> ExitCode {
    // rustls needs its process-wide crypto provider (ring) before any TLS client is built.
    let _ = rustls::crypto::ring::default_provider().install_default();
    shipshape::cli::run()
}
