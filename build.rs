// Migrations are embedded at compile time (`sqlx::migrate!`): rebuild when one is added.
//
// The tests that need PostgreSQL or Redis are compiled as ignored unless TEST_DATABASE_URL /
// TEST_REDIS_URL names a server, so a plain `cargo test` reports them as skipped rather than
// counting them as passed (docs/testing.md). Setting or clearing either rebuilds.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
    for (variable, cfg) in [("TEST_DATABASE_URL", "test_postgres"), ("TEST_REDIS_URL", "test_redis")] {
        println!("cargo:rerun-if-env-changed={variable}");
        println!("cargo::rustc-check-cfg=cfg({cfg})");
        if std::env::var(variable).is_ok_and(|value| !value.is_empty()) {
            println!("cargo:rustc-cfg={cfg}");
        }
    }
}
