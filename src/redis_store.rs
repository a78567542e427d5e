//! Redis, when `REDIS_URL` is set: shared state for every instance.

use std::time::Duration;

/// Connects and sends `PING`, all within `limit`.
pub async fn ping(url: &str, limit: Duration) -> Result<(), String> {
    let attempt = async {
        let client = redis::Client::open(url)?;
        let mut connection = client.get_multiplexed_async_connection().await?;
        redis::cmd("PING").query_async::<String>(&mut connection).await
    };
    match tokio::time::timeout(limit, attempt).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {} s", limit.as_secs())),
    }
}
