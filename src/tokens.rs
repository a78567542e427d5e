//! Opaque secret tokens (refresh tokens, password-reset links): random, handed to the client
//! once, and stored only as their SHA-256, so a leaked table holds nothing usable.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};

use crate::error::ApiError;

/// Random bytes in a token: 256 bits.
pub const BYTES: usize = 32;

/// A new random token, base64url without padding.
pub fn random() -> Result<String, ApiError> {
    let mut bytes = [0u8; BYTES];
    getrandom::fill(&mut bytes).map_err(|e| ApiError::Internal(anyhow::anyhow!("no randomness: {e}")))?;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

/// Whether `text` has the form of a token of ours (before any lookup).
pub fn is_well_formed(text: &str) -> bool {
    URL_SAFE_NO_PAD.decode(text).is_ok_and(|bytes| bytes.len() == BYTES)
}

/// What the database keeps of a token: its SHA-256, base64url.
pub fn hash(token: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(token.as_bytes()))
}
