//! A `postgres://` URL read the way libpq reads it (TLS mode, root certificate), at start
//! (`DATABASE_URL`, `DATABASE_DIRECT_URL`) and by whatever connects with it later.

use std::str::FromStr;

use sqlx::postgres::{PgConnectOptions, PgSslMode};

/// Connection options for a `postgres://` URL, or a one-line reason it cannot be used (the
/// caller names `DATABASE_URL`). Never echoes the URL: it may hold a password.
pub fn connect_options(url: &str) -> Result<PgConnectOptions, String> {
    let parsed = url::Url::parse(url).map_err(|e| format!("not a valid URL ({e})"))?;
    // The driver applies query parameters in order, so the last of each wins (as in libpq).
    let last = |keys: &[&str]| {
        parsed
            .query_pairs()
            .filter(|(k, _)| keys.contains(&k.as_ref()))
            .last()
            .map(|(_, v)| v.into_owned())
    };
    if let Some(mode) = last(&["sslmode", "ssl-mode"])
        && PgSslMode::from_str(&mode).is_err()
    {
        return Err(format!(
            "sslmode={mode:?} is not one of disable, allow, prefer, require, verify-ca, verify-full"
        ));
    }
    let root_cert = last(&["sslrootcert", "ssl-root-cert", "ssl-ca"]);
    if let Some(path) = &root_cert {
        super::read_pem_certificates(path).map_err(|reason| format!("sslrootcert {reason}"))?;
    }
    let mut options = PgConnectOptions::from_str(url).map_err(|e| e.to_string())?;
    // libpq verifies the server against a root certificate whenever one is given, even
    // with `sslmode=require`; the driver would not, so say it explicitly.
    if root_cert.is_some() && matches!(options.get_ssl_mode(), PgSslMode::Require) {
        options = options.ssl_mode(PgSslMode::VerifyCa);
    }
    // `extra_float_digits` is a start-up parameter PgBouncer refuses by default, and
    // PostgreSQL 12+ already sends floats exactly. `statement_timeout` is set after connecting
    // (see `pool_options`), not through the `options` start-up parameter, for the same reason.
    options = options.extra_float_digits(None);
    if options.get_application_name().is_none() {
        options = options.application_name(env!("CARGO_PKG_NAME"));
    }
    Ok(options)
}

/// Whether connections with these options use TLS (`sslmode=require` or stricter).
pub fn requires_tls(options: &PgConnectOptions) -> bool {
    matches!(
        options.get_ssl_mode(),
        PgSslMode::Require | PgSslMode::VerifyCa | PgSslMode::VerifyFull
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_url_as_libpq_does() {
        // The last sslmode wins, whatever its case.
        let options = connect_options("postgres://u@db.example.com/app?sslmode=require&sslmode=disable").unwrap();
        assert!(!requires_tls(&options));
        let options = connect_options("postgres://u@db.example.com/app?sslmode=disable&sslmode=REQUIRE").unwrap();
        assert!(requires_tls(&options));
        let error = connect_options("postgres://u:hunter2@h/app?sslmode=no-verify").unwrap_err();
        assert!(error.contains("no-verify") && !error.contains("hunter2"), "{error}");
        let error = connect_options("postgres://u@h/app?sslmode=require&sslrootcert=/missing/ca.pem").unwrap_err();
        assert!(error.contains("/missing/ca.pem"), "{error}");
        assert_eq!(
            connect_options("postgres://u@h/app").unwrap().get_application_name(),
            Some("shipshape")
        );
    }

    #[test]
    fn a_root_certificate_means_verification() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n").unwrap();
        let url = format!("postgres://u@h/app?sslmode=require&sslrootcert={}", ca.display());
        assert!(matches!(
            connect_options(&url).unwrap().get_ssl_mode(),
            PgSslMode::VerifyCa
        ));
    }
}
