//! Email, sent only by jobs (docs/jobs.md): through SMTP when `EMAIL_URL` is set; otherwise
//! written to the log in development (so a developer can follow a link) and dropped with a
//! warning in production.

use std::net::IpAddr;
use std::time::Duration;

use lettre::message::{Mailbox, header::ContentType};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use crate::config::{AppEnv, Config};

/// Bounds on connecting to the mail server and on the whole conversation that sends one
/// message: a server that hangs fails the attempt, which is retried, instead of holding a
/// worker for ever (lettre bounds the connect only).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const SEND_TIMEOUT: Duration = Duration::from_secs(20);
/// `smtp://` and `smtps://` ports when the URL names none: submission with STARTTLS, and
/// submission over implicit TLS (RFC 8314).
const SUBMISSION_PORT: u16 = 587;
const SUBMISSIONS_PORT: u16 = 465;

/// One plain-text message.
pub struct Email {
    pub to: String,
    pub subject: String,
    pub text: String,
}

/// Where email goes; cheap to clone.
#[derive(Clone)]
pub enum Mailer {
    Smtp {
        transport: AsyncSmtpTransport<Tokio1Executor>,
        from: Mailbox,
    },
    /// Development without `EMAIL_URL`: each message goes to the log.
    Log,
    /// Production without `EMAIL_URL`: dropped, with a warning each (`check --deploy` W017).
    Drop,
}

impl Mailer {
    pub fn from_config(config: &Config) -> anyhow::Result<Mailer> {
        let Some(url) = &config.email.url else {
            return Ok(match config.app_env {
                AppEnv::Development => Mailer::Log,
                AppEnv::Production => Mailer::Drop,
            });
        };
        let from: Mailbox = config
            .email
            .from_address()
            .parse()
            .map_err(|e| anyhow::anyhow!("EMAIL_FROM: {e}"))?;
        Ok(Mailer::Smtp {
            transport: transport(url.expose())?,
            from,
        })
    }

    pub async fn send(&self, email: &Email) -> anyhow::Result<()> {
        match self {
            Mailer::Smtp { transport, from } => {
                let to: Mailbox = email
                    .to
                    .parse()
                    .map_err(|e| anyhow::anyhow!("not an address we can send to: {e}"))?;
                let message = Message::builder()
                    .from(from.clone())
                    .to(to)
                    .subject(&email.subject)
                    .header(ContentType::TEXT_PLAIN)
                    .body(email.text.clone())?;
                tokio::time::timeout(SEND_TIMEOUT, transport.send(message))
                    .await
                    .map_err(|_| {
                        anyhow::anyhow!("the mail server did not answer in time ({} s)", SEND_TIMEOUT.as_secs())
                    })?
                    .map_err(|e| anyhow::anyhow!("the mail server did not take the message: {e}"))?;
                tracing::info!(subject = %email.subject, "email sent");
            }
            Mailer::Log => tracing::info!(
                to = %email.to,
                subject = %email.subject,
                text = %email.text,
                "email not sent (EMAIL_URL is not set): here it is"
            ),
            Mailer::Drop => tracing::warn!(
                subject = %email.subject,
                "email dropped: EMAIL_URL is not set (see `shipshape check --deploy`, W017)"
            ),
        }
        Ok(())
    }

    /// Connects and greets the mail server, sending nothing (`check --deploy --connect`, W020).
    pub async fn probe(&self) -> Result<(), String> {
        match self {
            Mailer::Smtp { transport, .. } => match tokio::time::timeout(SEND_TIMEOUT, transport.test_connection())
                .await
                .map_err(|_| "the mail server did not answer in time".to_owned())?
            {
                Ok(true) => Ok(()),
                Ok(false) => Err("the mail server closed the connection".to_owned()),
                Err(e) => Err(e.to_string()),
            },
            Mailer::Log | Mailer::Drop => Ok(()),
        }
    }
}

/// The SMTP transport of `EMAIL_URL`: `smtps://` is TLS from the start; `smtp://` requires
/// STARTTLS, except to a loopback address (a local relay or test server), where it is used
/// when offered. Certificates are checked against the system's roots (`SSL_CERT_FILE` adds
/// a private CA).
fn transport(url: &str) -> anyhow::Result<AsyncSmtpTransport<Tokio1Executor>> {
    let url = url::Url::parse(url).map_err(|_| anyhow::anyhow!("EMAIL_URL is not a URL"))?;
    let host = url
        .host_str()
        .map(|h| h.trim_start_matches('[').trim_end_matches(']').to_owned())
        .ok_or_else(|| anyhow::anyhow!("EMAIL_URL names no host"))?;
    let implicit = url.scheme() == "smtps";
    let parameters = TlsParameters::new(host.clone())?;
    let tls = match (implicit, is_loopback(&host)) {
        (true, _) => Tls::Wrapper(parameters),
        (false, true) => Tls::Opportunistic(parameters),
        (false, false) => Tls::Required(parameters),
    };
    let port = url
        .port()
        .unwrap_or(if implicit { SUBMISSIONS_PORT } else { SUBMISSION_PORT });
    let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host)
        .port(port)
        .tls(tls)
        .timeout(Some(CONNECT_TIMEOUT));
    if !url.username().is_empty() {
        let decode = |part: &str| {
            percent_encoding::percent_decode_str(part)
                .decode_utf8_lossy()
                .into_owned()
        };
        builder = builder.credentials(Credentials::new(
            decode(url.username()),
            decode(url.password().unwrap_or_default()),
        ));
    }
    Ok(builder.build())
}

fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost") || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_sender_and_the_loopback_rule_hold() {
        let from: Result<Mailbox, _> = crate::config::EmailConfig::DEFAULT_FROM.parse();
        assert!(from.is_ok(), "{from:?}");
        for host in ["localhost", "127.0.0.1", "::1", "LOCALHOST"] {
            assert!(is_loopback(host), "{host}");
        }
        for host in ["smtp.example.com", "10.0.0.1", "localhost.example.com"] {
            assert!(!is_loopback(host), "{host}");
        }
    }
}
