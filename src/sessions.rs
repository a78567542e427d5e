//! Sessions: one per sign-in, so that a token can be taken back before it expires — by a
//! logout, a password change, or an operator disabling the account (docs/accounts.md).
//!
//! An access token names its session (`sid`); the extractors of `AuthUser` and `AdminUser`
//! (`auth.rs`) refuse it once that session has ended. A refresh token is
//! `<session id>.<secret>`: the id says which session it claims, only the secret's SHA-256 is
//! stored, and each refresh replaces it. A secret that is not the session's current one was
//! spent already (or stolen and spent by someone else): the whole session ends, as the OAuth
//! 2.0 Security BCP advises for refresh-token rotation.

use std::time::Duration;

use uuid::Uuid;

use crate::db::{self, Db, Tx};
use crate::error::ApiError;
use crate::users::{self, Role, Standing, UserRow};
use crate::{tokens, with_db, with_tx, with_write};

/// A refresh token as the client holds it.
pub struct RefreshToken {
    pub session: Uuid,
    secret: String,
}

impl RefreshToken {
    fn generate(session: Uuid) -> Result<RefreshToken, ApiError> {
        Ok(RefreshToken {
            session,
            secret: tokens::random()?,
        })
    }

    /// `None` for anything that is not exactly a token of ours (an access token included).
    pub fn parse(text: &str) -> Option<RefreshToken> {
        let (session, secret) = text.split_once('.')?;
        let session = Uuid::try_parse(session)
            .ok()
            .filter(|id| id.simple().to_string() == session)?;
        tokens::is_well_formed(secret).then(|| RefreshToken {
            session,
            secret: secret.to_owned(),
        })
    }

    /// What the database keeps: the secret's SHA-256, base64url.
    fn hash(&self) -> String {
        tokens::hash(&self.secret)
    }

    /// The token to hand to the client.
    pub fn expose(&self) -> String {
        format!("{}.{}", self.session.simple(), self.secret)
    }
}

/// A session just started: its id (for the access token) and its first refresh token.
pub struct Started {
    pub session: Uuid,
    pub refresh: RefreshToken,
}

/// Starts a session for `user`, inside the caller's transaction (a signup's insert, a
/// login), so that a failure leaves neither behind.
pub async fn start(tx: &mut Tx, user: Uuid) -> Result<Started, ApiError> {
    // An account disabled since the caller read it gets no session: the row lock (PostgreSQL;
    // SQLite's one writer runs them in turn) orders this against a disable, whose ending of
    // sessions would otherwise miss the new one.
    let lock = match *tx {
        Tx::Postgres(_) => " FOR SHARE",
        Tx::Sqlite(..) => "",
    };
    let sql = format!("SELECT disabled_at FROM users WHERE id = $1{lock}");
    let disabled: Option<Option<i64>> = with_tx!(tx, conn => {
        sqlx::query_scalar(sqlx::AssertSqlSafe(sql)).bind(user.to_string()).fetch_optional(&mut **conn).await
    })?;
    match disabled {
        Some(None) => {}
        Some(Some(_)) => return Err(ApiError::AccountDisabled),
        None => return Err(ApiError::Unauthorized),
    }
    let session = Uuid::new_v4();
    let refresh = RefreshToken::generate(session)?;
    let now = db::now_micros();
    let sql = "INSERT INTO sessions (id, user_id, refresh_hash, created_at, refreshed_at) VALUES ($1, $2, $3, $4, $4)";
    with_tx!(tx, conn => {
        sqlx::query(sql)
            .bind(session.to_string())
            .bind(user.to_string())
            .bind(refresh.hash())
            .bind(now)
            .execute(&mut **conn)
            .await
            .map(drop)
    })?;
    Ok(Started { session, refresh })
}

/// The oldest `refreshed_at` of a session that still runs.
fn cutoff(ttl: Duration) -> i64 {
    db::now_micros().saturating_sub(i64::try_from(ttl.as_micros()).unwrap_or(i64::MAX))
}

/// What a refresh did.
pub enum Refreshed {
    /// The user, and the token that replaces the one spent.
    Renewed(Uuid, RefreshToken),
    /// Refused; `ended` when that ended a session that was still there.
    Refused { ended: bool },
}

/// Spends `token` for a new one. A token that is not the session's current one, a session
/// past its time or an account that is disabled: refused, and the session (if any) ends.
pub async fn refresh(db: &Db, token: &RefreshToken, ttl: Duration) -> Result<Refreshed, ApiError> {
    let next = RefreshToken::generate(token.session)?;
    let session = token.session.to_string();
    let renew = "UPDATE sessions SET refresh_hash = $1, refreshed_at = $2 \
                 WHERE id = $3 AND refresh_hash = $4 AND refreshed_at > $5 \
                 AND EXISTS (SELECT 1 FROM users u WHERE u.id = sessions.user_id AND u.disabled_at IS NULL) \
                 RETURNING user_id";
    let end = "DELETE FROM sessions WHERE id = $1 RETURNING user_id";
    // In a transaction: on SQLite, writes wait their turn in the writer queue.
    let mut tx = db.begin().await?;
    let renewed: Option<String> = with_tx!(&mut tx, conn => {
        sqlx::query_scalar(renew)
            .bind(next.hash())
            .bind(db::now_micros())
            .bind(&session)
            .bind(token.hash())
            .bind(cutoff(ttl))
            .fetch_optional(&mut **conn)
            .await
    })?;
    if let Some(user) = renewed {
        tx.commit().await?;
        let user = Uuid::parse_str(&user).map_err(|e| ApiError::Internal(e.into()))?;
        return Ok(Refreshed::Renewed(user, next));
    }
    let ended: Option<String> =
        with_tx!(&mut tx, conn => sqlx::query_scalar(end).bind(&session).fetch_optional(&mut **conn).await)?;
    tx.commit().await?;
    if let Some(user) = &ended {
        tracing::warn!(
            session_id = %token.session,
            user_id = %user,
            "refresh token refused (spent already, the session expired, or the account is disabled): session ended"
        );
    }
    Ok(Refreshed::Refused { ended: ended.is_some() })
}

/// Ends one session (a logout).
pub async fn end(db: &Db, session: Uuid) -> Result<(), ApiError> {
    let sql = "DELETE FROM sessions WHERE id = $1";
    with_write!(db, conn => sqlx::query(sql).bind(session.to_string()).execute(conn).await.map(drop))
}

/// Ends every session of `user` but `keep` (a password change keeps the caller's), inside
/// the caller's transaction.
pub async fn end_all(tx: &mut Tx, user: Uuid, keep: Option<Uuid>) -> Result<u64, ApiError> {
    let sql = "DELETE FROM sessions WHERE user_id = $1 AND id <> $2";
    let keep = keep.map(|id| id.to_string()).unwrap_or_default();
    let done = with_tx!(tx, conn => {
        sqlx::query(sql)
            .bind(user.to_string())
            .bind(keep)
            .execute(&mut **conn)
            .await
            .map(|done| done.rows_affected())
    })?;
    Ok(done)
}

/// The scheduled job that deletes expired sessions (`app::jobs`).
#[derive(serde::Serialize, serde::Deserialize)]
pub struct SweepExpired;

impl crate::jobs::Job for SweepExpired {
    const KIND: &'static str = "sessions.sweep";
}

/// Deletes the sessions unused for `ttl` (the [`SweepExpired`] job); says how many.
pub async fn delete_expired(db: &Db, ttl: Duration) -> Result<u64, sqlx::Error> {
    let sql = "DELETE FROM sessions WHERE refreshed_at <= $1";
    with_write!(db, conn => {
        sqlx::query(sql).bind(cutoff(ttl)).execute(conn).await.map(|done| done.rows_affected())
    })
}

/// The role of `user` while its `session` runs and the account is enabled; `None` otherwise.
pub async fn read(db: &Db, session: Uuid, user: Uuid, ttl: Duration) -> Result<Option<Role>, ApiError> {
    let sql = "SELECT u.role FROM sessions s JOIN users u ON u.id = s.user_id \
               WHERE s.id = $1 AND s.user_id = $2 AND s.refreshed_at > $3 AND u.disabled_at IS NULL";
    let role: Option<String> = with_db!(db, pool => {
        sqlx::query_scalar(sql)
            .bind(session.to_string())
            .bind(user.to_string())
            .bind(cutoff(ttl))
            .fetch_optional(pool)
            .await
    })?;
    Ok(role.as_deref().and_then(Role::parse))
}

/// What an operator does to an account (`users::change_standing`), in one transaction with
/// ending its sessions when it is disabled.
pub async fn change_standing(db: &Db, id: Uuid, change: Standing) -> Result<Option<UserRow>, ApiError> {
    let mut tx = db.begin().await?;
    let row = users::change_standing(&mut tx, id, change).await?;
    if row.is_some() && matches!(change, Standing::Disable) {
        end_all(&mut tx, id, None).await?;
    }
    tx.commit().await?;
    Ok(row)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refresh_token_reads_back_and_nothing_else_reads_as_one() {
        let token = RefreshToken::generate(Uuid::new_v4()).expect("token");
        let text = token.expose();
        let parsed = RefreshToken::parse(&text).expect("parses");
        assert_eq!((parsed.session, parsed.hash()), (token.session, token.hash()));
        assert_ne!(token.hash(), token.secret, "only the hash is stored");
        let (id, secret) = text.split_once('.').expect("two parts");
        for bad in [
            String::new(),
            id.to_owned(),
            format!("{}.{secret}", token.session.hyphenated()),
            format!("{id}.{}", &secret[1..]),
            format!("{id}.{secret}="),
            "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl".to_owned(),
        ] {
            assert!(RefreshToken::parse(&bad).is_none(), "{bad}");
        }
    }
}
