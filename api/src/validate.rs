//! Field checks shared by every route: each pushes a [`FieldError`] naming the
//! field and returns the cleaned value, so a handler reports all bad fields at once.

use crate::error::{ApiError, FieldError};

/// Trimmed text of 1 to `max_chars` characters, without control characters
/// other than line breaks and tabs.
pub fn text_field(
    field: &str,
    value: &str,
    max_chars: usize,
    errors: &mut Vec<FieldError>,
) -> String {
    let value = value.trim();
    let chars = value.chars().count();
    if chars == 0 {
        errors.push(FieldError::new(field, "is required"));
    } else if chars > max_chars {
        errors.push(FieldError::new(
            field,
            format!("must be at most {max_chars} characters"),
        ));
    } else if value
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\r' && c != '\t')
    {
        errors.push(FieldError::new(
            field,
            "must not contain control characters",
        ));
    }
    value.to_owned()
}

/// A trimmed email address of at most 254 characters.
pub fn email_field(field: &str, value: &str, errors: &mut Vec<FieldError>) -> String {
    let email = value.trim().to_owned();
    if email.len() > 254 || !email_address::EmailAddress::is_valid(&email) {
        errors.push(FieldError::new(field, "must be a valid email address"));
    }
    email
}

/// 3 to 30 of `[a-zA-Z0-9_-]`.
pub fn username_field(field: &str, value: &str, errors: &mut Vec<FieldError>) -> String {
    let username = value.trim().to_owned();
    let ok = (3..=30).contains(&username.len())
        && username
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if !ok {
        errors.push(FieldError::new(
            field,
            "must be 3 to 30 letters, digits, '_' or '-'",
        ));
    }
    username
}

/// A present, non-empty secret (password, code, token) of bounded length; its
/// content is checked elsewhere.
pub fn secret_field(field: &str, value: &str, max_chars: usize, errors: &mut Vec<FieldError>) {
    if value.is_empty() {
        errors.push(FieldError::new(field, "is required"));
    } else if value.chars().count() > max_chars {
        errors.push(FieldError::new(
            field,
            format!("must be at most {max_chars} characters"),
        ));
    }
}

/// A timestamp between the years 1970 and 9999: what Postgres and date
/// arithmetic handle without overflow, and all a caller can mean.
pub fn timestamp_field(
    field: &str,
    value: Option<chrono::DateTime<chrono::Utc>>,
    errors: &mut Vec<FieldError>,
) -> Option<chrono::DateTime<chrono::Utc>> {
    use chrono::Datelike;
    let value = value?;
    if (1970..=9999).contains(&value.year()) {
        Some(value)
    } else {
        errors.push(FieldError::new(
            field,
            "must be a date-time between the years 1970 and 9999",
        ));
        None
    }
}

pub fn finish(errors: Vec<FieldError>) -> Result<(), ApiError> {
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ApiError::validation(errors))
    }
}

/// For `#[serde(default, deserialize_with = "validate::present")]`: `null`
/// and absent differ, `Some(None)` clears a field, `None` leaves it.
pub fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    <Option<String> as serde::Deserialize>::deserialize(d).map(Some)
}

/// For `#[serde(default, deserialize_with = "validate::whole_number")]`:
/// JSON Schema counts `288.0` as an integer, so it is one here too; a
/// fraction or a number out of range is refused.
pub fn whole_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<i32>, D::Error> {
    let value = <Option<f64> as serde::Deserialize>::deserialize(d)?;
    value
        .map(|v| {
            if v.fract() == 0.0 && (f64::from(i32::MIN)..=f64::from(i32::MAX)).contains(&v) {
                Ok(v as i32)
            } else {
                Err(serde::de::Error::custom("expected a whole number"))
            }
        })
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_numbers_may_be_written_as_floats() {
        #[derive(serde::Deserialize)]
        struct Body {
            #[serde(default, deserialize_with = "whole_number")]
            n: Option<i32>,
        }
        let parse = |text: &str| serde_json::from_str::<Body>(text).map(|b| b.n);
        assert_eq!(parse(r#"{"n": 288.0}"#).unwrap(), Some(288));
        assert_eq!(parse(r#"{"n": 3}"#).unwrap(), Some(3));
        assert_eq!(parse(r#"{}"#).unwrap(), None);
        assert!(parse(r#"{"n": 1.5}"#).is_err());
        assert!(parse(r#"{"n": 1e12}"#).is_err());
    }

    #[test]
    fn usernames() {
        for good in ["ada", "ada_lovelace-1", &"a".repeat(30)] {
            let mut errors = Vec::new();
            username_field("username", good, &mut errors);
            assert!(errors.is_empty(), "{good}");
        }
        for bad in ["ad", "ada lovelace", "ada;rm", "adé", &"a".repeat(31)] {
            let mut errors = Vec::new();
            username_field("username", bad, &mut errors);
            assert_eq!(errors.len(), 1, "{bad}");
        }
    }
}
