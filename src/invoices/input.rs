//! A new invoice and the rule of each of its fields: the check, the 422's message and the
//! OpenAPI schema all come from the one type per field.

use utoipa::ToSchema;
use utoipa::openapi::schema::{ObjectBuilder, Type};

use crate::input::{Date, Fields, FromJson, Integer, Text};
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
    pub due_date: Option<Date>,
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
