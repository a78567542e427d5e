// Migrations are embedded at compile time (`sqlx::migrate!`): rebuild when one is added.
//
// The tests that need PostgreSQL or Redis are compiled as ignored unless TEST_DATABASE_URL /
// TEST_REDIS_URL names a server, so a plain `cargo test` reports them as skipped rather than
// counting them as passed (docs/testing.md). Setting or clearing either rebuilds. The same
// goes for the tests that run nginx, systemd-analyze or aiosmtpd (the SMTP server of the email
// tests): ignored unless it is on PATH when the
// tests are built (a change of PATH rebuilds; after installing one, `touch build.rs`).
fn main() {
    println!("cargo:rerun-if-changed=migrations");
    for (variable, cfg) in [("TEST_DATABASE_URL", "test_postgres"), ("TEST_REDIS_URL", "test_redis")] {
        println!("cargo:rerun-if-env-changed={variable}");
        println!("cargo::rustc-check-cfg=cfg({cfg})");
        if std::env::var(variable).is_ok_and(|value| !value.is_empty()) {
            println!("cargo:rustc-cfg={cfg}");
        }
    }
    println!("cargo:rerun-if-env-changed=PATH");
    for (program, cfg) in [
        ("nginx", "test_nginx"),
        ("systemd-analyze", "test_systemd"),
        ("aiosmtpd", "test_smtp"),
    ] {
        println!("cargo::rustc-check-cfg=cfg({cfg})");
        if on_path(program) {
            println!("cargo:rustc-cfg={cfg}");
        }
    }
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}
