//! A new invoice and the rule of each of its fields: the check, the 422's message and the
//! OpenAPI schema all come from the one type per field.

use utoipa::ToSchema;
use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, SchemaFormat, Type};

use crate::input::{Fields, FromJson, Integer, Text};
use crate::input_field;

/// The body of `POST /api/v1/invoices`.
#[derive(ToSchema)]
// `FromJson` refuses a field it does not know; utoipa reads this serde attribute (there is no
// serde derive) and documents it: `additionalProperties: false`.
#[serde(deny_unknown_fields)]
pub struct NewInvoice {
    #[schema(inline)]
    pub customer_name: CustomerName,
    #[schema(inline)]
    pub customer_phone: Option<Phone>,
    #[schema(inline)]
    pub amount_cents: AmountCents,
    #[schema(inline)]
    pub currency: Currency,
    #[schema(inline)]
    pub due_date: Option<DueDate>,
    #[schema(inline)]
    pub description: Option<Description>,
}

impl FromJson for NewInvoice {
    fn from_json(fields: &mut Fields) -> Option<NewInvoice> {
        let customer_name = fields.required("customer_name");
        let customer_phone = fields.optional("customer_phone");
        let amount_cents = fields.required("amount_cents");
        let currency = fields.required("currency");
        let due_date = fields.optional("due_date");
        let description = fields.optional("description");
        Some(NewInvoice {
            customer_name: customer_name?,
            customer_phone: customer_phone?,
            amount_cents: amount_cents?,
            currency: currency?,
            due_date: due_date?,
            description: description?,
        })
    }
}

const CUSTOMER_NAME: Text = Text {
    min: 1,
    max: 200,
    not_blank: true,
    multiline: false,
};

input_field!(
    CustomerName(String),
    |value| CUSTOMER_NAME.parse(value),
    CUSTOMER_NAME
        .schema()
        .description(Some(
            "1 to 200 characters, not only white space, no control characters."
        ))
        .examples(["Acme Ltd"])
);

/// E.164: `+` and 7 to 15 digits.
const PHONE_DIGITS: std::ops::RangeInclusive<usize> = 7..=15;

input_field!(
    Phone(String),
    |value| {
        let phone = String::parse(value)?;
        let digits = phone.strip_prefix('+').unwrap_or_default();
        if !PHONE_DIGITS.contains(&digits.len()) || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!(
                "must be E.164: + and {} to {} digits",
                PHONE_DIGITS.start(),
                PHONE_DIGITS.end()
            ));
        }
        Ok(phone)
    },
    ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some(format!(
            r"^\+[0-9]{{{},{}}}$",
            PHONE_DIGITS.start(),
            PHONE_DIGITS.end()
        )))
        .description(Some("E.164: `+` and 7 to 15 digits."))
        .examples(["+14155550100"])
);

const AMOUNT_CENTS: Integer = Integer {
    min: 1,
    max: 100_000_000_000,
};

input_field!(
    AmountCents(i64),
    |value| AMOUNT_CENTS.parse(value),
    AMOUNT_CENTS
        .schema()
        .description(Some("1 to 100000000000."))
        .examples([12500])
);

input_field!(
    Currency(String),
    |value| {
        let currency = String::parse(value)?;
        if currency.len() != 3 || !currency.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err("must be three upper-case letters, e.g. USD".to_owned());
        }
        Ok(currency)
    },
    ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some("^[A-Z]{3}$"))
        .description(Some("Three upper-case letters (ISO 4217)."))
        .examples(["USD"])
);

input_field!(
    DueDate(String),
    |value| {
        let date = String::parse(value)?;
        if !is_calendar_date(&date) {
            return Err("must be a date as YYYY-MM-DD".to_owned());
        }
        Ok(date)
    },
    ObjectBuilder::new()
        .schema_type(Type::String)
        .format(Some(SchemaFormat::KnownFormat(KnownFormat::Date)))
        .pattern(Some(
            r"^(000[1-9]|00[1-9][0-9]|0[1-9][0-9]{2}|[1-9][0-9]{3})-[0-9]{2}-[0-9]{2}$"
        ))
        .description(Some("`YYYY-MM-DD`, a real date with a year from 0001 to 9999."))
        .examples(["2026-12-31"])
);

const DESCRIPTION: Text = Text {
    min: 0,
    max: 2000,
    not_blank: false,
    multiline: true,
};

input_field!(
    Description(String),
    |value| DESCRIPTION.parse(value),
    DESCRIPTION.schema().description(Some(
        "At most 2000 characters; line breaks and tabs are the only control characters allowed."
    ))
);

/// Exactly `YYYY-MM-DD`, a real date, year 0001 to 9999: `time` alone also takes signed,
/// longer and zero years (`+2026-01-01`, `0000-01-01`), which would be stored as sent.
fn is_calendar_date(text: &str) -> bool {
    let shape_ok = text.len() == 10
        && text.bytes().enumerate().all(|(i, b)| {
            if i == 4 || i == 7 {
                b == b'-'
            } else {
                b.is_ascii_digit()
            }
        });
    shape_ok
        && !text.starts_with("0000")
        && time::Date::parse(text, time::macros::format_description!("[year]-[month]-[day]")).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_dates_are_exactly_yyyy_mm_dd() {
        for good in ["0001-01-01", "2024-02-29", "9999-12-31"] {
            assert!(is_calendar_date(good), "{good}");
        }
        for bad in [
            "+2026-01-01",
            "-0001-01-01",
            "0000-01-01",
            "2026-1-01",
            "2025-02-29",
            "20260101",
            "٢٠٢٦-01-01",
        ] {
            assert!(!is_calendar_date(bad), "{bad}");
        }
    }
}
