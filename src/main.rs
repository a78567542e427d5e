use std::process::ExitCode;

fn main() -> ExitCode {
    shipshape::tune_allocator();
    shipshape::install_crypto_provider();
    shipshape::cli::run()
}
