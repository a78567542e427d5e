//! Keyset pagination, newest first, for every list: the page size and cursor a client sends,
//! and the page it gets back (docs/api.md, "Lists and pagination"). A page is the rows after
//! `(created_at, id)` in `ORDER BY created_at DESC, id DESC`: stable under inserts and equal
//! timestamps, with no gaps or repeats, and as fast on the thousandth page as on the first.

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::error::ApiError;

/// Page sizes: 1 to 100, 20 when not given.
pub const PAGE_SIZE_MAX: u32 = 100;
pub const PAGE_SIZE_DEFAULT: u32 = 20;

/// The query of a list with no filter of its own. A list with filters declares its own
/// parameters (with these two among them) and passes them to [`PageRequest::new`].
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
// Our `ApiQuery` extractor is not axum's `Query`, so utoipa must be told where these live.
#[into_params(parameter_in = Query)]
pub struct PageParams {
    /// Page size, 1 to 100 (default 20).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page: `{created_at}_{id}`, the position after its last
    /// item (creation time in microseconds since 1970, and the item's id).
    #[param(pattern = r"^[0-9]{1,18}_[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")]
    pub cursor: Option<String>,
}

/// A page of a list.
#[derive(Serialize, ToSchema)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Pass as `cursor` for the next page; null on the last page.
    pub next_cursor: Option<String>,
}

/// Where a page starts: after `(created_at, id)`, newest first.
pub struct Cursor {
    pub created_at: i64,
    pub id: String,
}

impl Cursor {
    /// Before every row: the first page.
    pub fn first() -> Cursor {
        Cursor {
            created_at: i64::MAX,
            id: String::new(),
        }
    }

    /// The documented pattern of `cursor`; every string matching it is accepted, so the schema
    /// and the server agree exactly. Anything else is 400 `invalid_cursor`.
    pub fn decode(cursor: &str) -> Result<Cursor, ApiError> {
        let (created_at, id) = cursor.split_once('_').ok_or(ApiError::InvalidCursor)?;
        // At most 18 digits always fits an i64; `parse` alone would also take a sign.
        if !(1..=18).contains(&created_at.len()) || !created_at.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ApiError::InvalidCursor);
        }
        let created_at = created_at.parse().map_err(|_| ApiError::InvalidCursor)?;
        // Only the lower-case hyphenated form that ids are stored in (`parse_str` takes others).
        let uuid = Uuid::parse_str(id).map_err(|_| ApiError::InvalidCursor)?;
        if uuid.hyphenated().to_string() != id {
            return Err(ApiError::InvalidCursor);
        }
        Ok(Cursor {
            created_at,
            id: id.to_owned(),
        })
    }

    fn encode(created_at: i64, id: &str) -> String {
        format!("{created_at}_{id}")
    }
}

/// A checked request for one page.
pub struct PageRequest {
    pub start: Cursor,
    limit: u32,
}

impl PageRequest {
    /// 422 naming `limit` when it is out of range, 400 `invalid_cursor` for a bad cursor.
    pub fn new(limit: Option<u32>, cursor: Option<&str>) -> Result<PageRequest, ApiError> {
        let limit = limit.unwrap_or(PAGE_SIZE_DEFAULT);
        if !(1..=PAGE_SIZE_MAX).contains(&limit) {
            return Err(ApiError::validation(
                "limit",
                &format!("must be from 1 to {PAGE_SIZE_MAX}"),
            ));
        }
        let start = match cursor {
            Some(cursor) => Cursor::decode(cursor)?,
            None => Cursor::first(),
        };
        Ok(PageRequest { start, limit })
    }

    /// How many rows to ask the database for: one more than the page, which tells whether
    /// another page follows.
    pub fn fetch(&self) -> i64 {
        i64::from(self.limit) + 1
    }

    /// The page made of `rows` (fetched with [`fetch`](Self::fetch)): `position` gives a row's
    /// `(created_at, id)` and `item` what the client sees of it.
    pub fn page<R, T>(
        &self,
        mut rows: Vec<R>,
        position: impl Fn(&R) -> (i64, &str),
        item: impl FnMut(R) -> Result<T, ApiError>,
    ) -> Result<Page<T>, ApiError> {
        let next_cursor = match rows.len() > self.limit as usize {
            true => {
                rows.truncate(self.limit as usize);
                rows.last().map(|row| {
                    let (created_at, id) = position(row);
                    Cursor::encode(created_at, id)
                })
            }
            false => None,
        };
        let items = rows.into_iter().map(item).collect::<Result<_, _>>()?;
        Ok(Page { items, next_cursor })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_are_exactly_the_documented_pattern() {
        let id = "0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b";
        let cursor = Cursor::decode(&format!("1764000000000000_{id}")).expect("valid");
        assert_eq!((cursor.created_at, cursor.id.as_str()), (1_764_000_000_000_000, id));
        for bad in [
            "",
            "123",
            &format!("-1_{id}"),
            &format!("+1_{id}"),
            &format!("1234567890123456789_{id}"),
            &format!("1_{}", id.to_uppercase()),
            "1_0193a1b2c3d47e5f8a9b0c1d2e3f4a5b",
        ] {
            assert!(matches!(Cursor::decode(bad), Err(ApiError::InvalidCursor)), "{bad}");
        }
        assert!(
            Cursor::decode("0_00000000-0000-0000-0000-000000000000").is_ok(),
            "schema-valid"
        );
    }

    #[test]
    fn a_page_has_a_cursor_only_when_more_rows_follow() {
        let request = PageRequest::new(Some(2), None).expect("valid");
        assert_eq!(request.fetch(), 3);
        let rows = |n: i64| (0..n).map(|i| (100 - i, format!("id-{i}"))).collect::<Vec<_>>();
        let page = |rows| {
            request
                .page(rows, |(at, id): &(i64, String)| (*at, id.as_str()), |(_, id)| Ok(id))
                .expect("page")
        };
        let full = page(rows(3));
        assert_eq!(full.items, ["id-0", "id-1"]);
        assert_eq!(full.next_cursor.as_deref(), Some("99_id-1"));
        let last = page(rows(2));
        assert_eq!((last.items.len(), last.next_cursor), (2, None));
        for limit in [0, 101] {
            assert!(matches!(
                PageRequest::new(Some(limit), None),
                Err(ApiError::Validation(_))
            ));
        }
    }
}
