use std::process::ExitCode;

fn main() -> ExitCode {
    shipshape::install_crypto_provider();
    shipshape::cli::run()
}
