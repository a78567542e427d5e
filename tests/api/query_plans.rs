//! The list pages as index ranges on both databases: a deep page and a status-filtered page
//! must be bounded by the index, never read from the start of the user's rows and filtered.

use serde_json::json;
use shipshape::db::Db;
use shipshape::invoices::store::{LIST_BY_STATUS_SQL, LIST_SQL};

use crate::helpers::{Backend, TestApp};
use crate::on_both_databases;

on_both_databases!(deep_and_status_filtered_pages_are_index_ranges);

/// The plan of a list query with its real parameters, one line per plan node or condition.
async fn plan(db: &Db, sql: &str, user: &str, cursor: (i64, &str), status: Option<&str>) -> Vec<String> {
    let explained = match db {
        Db::Sqlite(pool, _) => {
            let query =
                sqlx::query_as::<_, (i64, i64, i64, String)>(sqlx::AssertSqlSafe(format!("EXPLAIN QUERY PLAN {sql}")))
                    .bind(user)
                    .bind(cursor.0)
                    .bind(cursor.1)
                    .bind(21_i64);
            let rows = match status {
                Some(status) => query.bind(status),
                None => query,
            }
            .fetch_all(pool)
            .await;
            rows.expect("EXPLAIN QUERY PLAN").into_iter().map(|row| row.3).collect()
        }
        Db::Postgres(pool) => {
            let mut connection = pool.acquire().await.expect("connection");
            // A test table is tiny, so a sequential scan or a bitmap would cost less than any
            // index path; turned off, the plan shows which conditions the index can bound.
            sqlx::raw_sql("SET enable_seqscan = off; SET enable_bitmapscan = off")
                .execute(&mut *connection)
                .await
                .expect("planner settings");
            let query = sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(format!("EXPLAIN {sql}")))
                .bind(user)
                .bind(cursor.0)
                .bind(cursor.1)
                .bind(21_i64);
            let rows = match status {
                Some(status) => query.bind(status),
                None => query,
            }
            .fetch_all(&mut *connection)
            .await;
            // The settings stay with this connection only.
            connection.close().await.expect("close");
            rows.expect("EXPLAIN")
        }
    };
    explained.into_iter().map(|line| line.trim().to_owned()).collect()
}

/// Fails unless `index` alone yields the rows: the cursor in the index bound, nothing
/// filtered or sorted afterwards.
fn assert_bounded_by(plan: &[String], index: &str, backend: &Backend) {
    let text = plan.join("\n");
    match backend {
        Backend::Sqlite => {
            let status = if index.contains("status") { " AND status=?" } else { "" };
            let search = format!("SEARCH invoices USING INDEX {index} (user_id=?{status} AND (created_at,id)<(?,?))");
            assert_eq!(plan, [search], "the cursor bounds the index:\n{text}");
        }
        Backend::Postgres(_) => {
            assert!(
                plan[0].starts_with("Limit")
                    && plan[1].starts_with(&format!("->  Index Scan using {index} on invoices")),
                "an index scan under the limit:\n{text}"
            );
            let condition = plan
                .iter()
                .find(|line| line.starts_with("Index Cond:"))
                .expect("an index condition");
            assert!(
                condition.contains("ROW(created_at, id) < ROW("),
                "the cursor is an index bound:\n{text}"
            );
            assert!(
                plan.iter()
                    .all(|line| !line.starts_with("Filter:") && !line.contains("Sort")),
                "nothing filtered or sorted after the index:\n{text}"
            );
        }
    }
}

async fn deep_and_status_filtered_pages_are_index_ranges(backend: Backend) {
    let app = TestApp::spawn(backend.clone()).await;
    let token = app.signup("plans@example.com").await;
    let other = app.signup("plans-other@example.com").await;
    let mut ids = Vec::new();
    for amount in 1..=12 {
        ids.push(
            app.create_invoice(&token, amount).await["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
        app.create_invoice(&other, amount).await;
    }
    for id in ids.iter().step_by(3) {
        let sent = app
            .post_json(&format!("/api/v1/invoices/{id}/send"), &json!({}), Some(&token))
            .await;
        assert_eq!(sent.status(), 200);
    }
    // A cursor in the middle of the user's rows, as the next page of a deep listing would send.
    let db = &app.state.db;
    let (user, created_at): (String, i64) = shipshape::with_db!(db, pool => {
        sqlx::query_as("SELECT user_id, created_at FROM invoices WHERE id = $1").bind(&ids[5]).fetch_one(pool).await
    })
    .unwrap();
    let cursor = (created_at, ids[5].as_str());

    let deep = plan(db, LIST_SQL, &user, cursor, None).await;
    assert_bounded_by(&deep, "invoices_user_created_idx", &backend);
    let by_status = plan(db, LIST_BY_STATUS_SQL, &user, cursor, Some("sent")).await;
    assert_bounded_by(&by_status, "invoices_user_status_created_idx", &backend);
    app.stop().await;
}
