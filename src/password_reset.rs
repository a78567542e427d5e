//! Password reset by email (docs/accounts.md): a request enqueues a job for any well-formed
//! address, so the answer and its time say nothing of whether an account exists; the job
//! finds the account, stores a new token's hash and emails the link. Confirming spends the
//! token once, sets the password and ends every session of the account.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::db::{self, Db, Tx};
use crate::email::Email;
use crate::error::ApiError;
use crate::input::{Fields, FromJson};
use crate::jobs::{self, Context, Job};
use crate::users::{self, Password};
use crate::{tokens, with_db, with_tx, with_write};

/// `POST /api/v1/auth/password-reset`.
#[derive(ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResetRequest {
    #[schema(inline)]
    pub email: users::Email,
}

impl FromJson for ResetRequest {
    fn from_json(fields: &mut Fields) -> Option<ResetRequest> {
        Some(ResetRequest {
            email: fields.required("email")?,
        })
    }
}

/// `POST /api/v1/auth/password-reset/confirm`: the token from the link, and a new password
/// under the signup rules.
#[derive(ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResetConfirm {
    pub token: String,
    #[schema(inline)]
    pub password: Password,
}

impl FromJson for ResetConfirm {
    fn from_json(fields: &mut Fields) -> Option<ResetConfirm> {
        let token = fields.required("token");
        let password = fields.required("password");
        Some(ResetConfirm {
            token: token?,
            password: password?,
        })
    }
}

/// The job that emails a reset link to `email`, if it is an enabled account's.
#[derive(Serialize, Deserialize)]
pub struct SendLink {
    pub email: String,
}

impl Job for SendLink {
    const KIND: &'static str = "password_reset.email";
}

/// The scheduled job that deletes expired tokens (`app::jobs`).
#[derive(Serialize, Deserialize)]
pub struct SweepExpired;

impl Job for SweepExpired {
    const KIND: &'static str = "password_reset.sweep";
}

/// Enqueues the [`SendLink`] job, whatever the address: the request does the same work for
/// every email.
pub async fn request(db: &Db, email: &users::Email) -> Result<(), ApiError> {
    let mut tx = db.begin().await?;
    jobs::enqueue(&mut tx, &SendLink { email: email.0.clone() }).await?;
    tx.commit().await?;
    Ok(())
}

/// Runs [`SendLink`]: a new token replaces the account's earlier ones, and the link goes out.
/// An attempt that fails to send is retried with a new token (the last link sent works).
pub async fn send_link(context: &Context, job: SendLink) -> anyhow::Result<()> {
    let (db, config) = (&context.db, &context.config);
    let Some(account) = users::find_by_email(db, &job.email).await? else {
        tracing::debug!("password reset for an unknown email: nothing sent");
        return Ok(());
    };
    if account.is_disabled() {
        tracing::info!("password reset for a disabled account: nothing sent");
        return Ok(());
    }
    let user = account.id()?;
    let token = tokens::random()?;
    let now = db::now_micros();
    let ttl = config.password_reset_ttl;
    let expires_at = now.saturating_add(i64::try_from(ttl.as_micros()).unwrap_or(i64::MAX));
    let mut tx = db.begin().await?;
    delete_for(&mut tx, user).await?;
    with_tx!(&mut tx, conn => {
        sqlx::query("INSERT INTO password_resets (token_hash, user_id, expires_at, created_at) VALUES ($1, $2, $3, $4)")
            .bind(tokens::hash(&token))
            .bind(user.to_string())
            .bind(expires_at)
            .bind(now)
            .execute(&mut **conn)
            .await
            .map(drop)
    })?;
    tx.commit().await?;
    let minutes = ttl.as_secs().div_ceil(60);
    let link = format!("{}/reset-password?token={token}", config.email.public_url());
    let text = format!(
        "Someone asked to reset the password of this account.\n\n\
         To choose a new password, open this link within {minutes} minutes (it works once):\n\n{link}\n\n\
         If it was not you, ignore this email: the password stays as it is.\n"
    );
    context
        .mailer
        .send(&Email {
            to: job.email,
            subject: "Reset your password".to_owned(),
            text,
        })
        .await
}

/// The account a token resets and its email, while the token is unused and unexpired and the
/// account enabled; `None` otherwise (400 `invalid_token`).
pub async fn find(db: &Db, token: &str) -> Result<Option<(Uuid, String)>, ApiError> {
    if !tokens::is_well_formed(token) {
        return Ok(None);
    }
    let sql = "SELECT u.id, u.email FROM password_resets r JOIN users u ON u.id = r.user_id \
               WHERE r.token_hash = $1 AND r.expires_at > $2 AND u.disabled_at IS NULL";
    let row: Option<(String, String)> = with_db!(db, pool => {
        sqlx::query_as(sql).bind(tokens::hash(token)).bind(db::now_micros()).fetch_optional(pool).await
    })?;
    row.map(|(id, email)| Ok((Uuid::parse_str(&id).map_err(|e| ApiError::Internal(e.into()))?, email)))
        .transpose()
}

/// Spends `token` inside the caller's transaction (which sets the password): `false` when
/// another request spent it first.
pub async fn spend(tx: &mut Tx, token: &str, user: Uuid) -> Result<bool, ApiError> {
    let sql = "DELETE FROM password_resets WHERE token_hash = $1 AND user_id = $2 AND expires_at > $3";
    let spent = with_tx!(tx, conn => {
        sqlx::query(sql)
            .bind(tokens::hash(token))
            .bind(user.to_string())
            .bind(db::now_micros())
            .execute(&mut **conn)
            .await
            .map(|done| done.rows_affected())
    })?;
    if spent == 1 {
        delete_for(tx, user).await?;
    }
    Ok(spent == 1)
}

/// Deletes every token of `user`, inside the caller's transaction (a password set by any
/// means makes the links sent before it useless).
pub async fn delete_for(tx: &mut Tx, user: Uuid) -> Result<(), sqlx::Error> {
    let sql = "DELETE FROM password_resets WHERE user_id = $1";
    with_tx!(tx, conn => sqlx::query(sql).bind(user.to_string()).execute(&mut **conn).await.map(drop))
}

/// Deletes expired tokens (the [`SweepExpired`] job); says how many.
pub async fn delete_expired(db: &Db) -> Result<u64, sqlx::Error> {
    with_write!(db, conn => {
        sqlx::query("DELETE FROM password_resets WHERE expires_at <= $1")
            .bind(db::now_micros())
            .execute(conn)
            .await
            .map(|done| done.rows_affected())
    })
}
