//! A domain as a user types it, checked into the one form Berth stores and
//! hands to nginx and the CA: IDNA's ASCII form (UTS #46, as browsers map
//! it), lower case, no trailing dot.

/// Why a name is refused, for the `domainName` field's message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("is empty")]
    Empty,
    #[error("is an IP address: attach a DNS name")]
    IpAddress,
    #[error("is not a valid internationalized domain name")]
    Idna,
    #[error("is longer than 253 characters")]
    TooLong,
    #[error("has a label longer than 63 characters")]
    LabelTooLong,
    #[error("has an empty label")]
    EmptyLabel,
    #[error("needs at least two labels, as in app.example.com")]
    SingleLabel,
    #[error("may hold only letters, digits and hyphens in each label")]
    BadCharacter,
    #[error("has a label that starts or ends with a hyphen")]
    Hyphen,
    #[error("ends in a number, which no top-level domain is")]
    NumericTld,
    #[error("is a wildcard: send \"wildcard\": true to attach one")]
    Wildcard,
    #[error("may hold a wildcard only as its whole first label (*.example.com)")]
    WildcardPlace,
}

/// A checked domain name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainName {
    ascii: String,
}

impl DomainName {
    /// Checks `input`; a wildcard (`*.example.com`) only when `wildcard`.
    pub fn parse(input: &str, wildcard: bool) -> Result<Self, NameError> {
        let trimmed = input.trim();
        let trimmed = trimmed.strip_suffix('.').unwrap_or(trimmed);
        if trimmed.is_empty() {
            return Err(NameError::Empty);
        }
        let bare = trimmed.trim_start_matches('[').trim_end_matches(']');
        if bare.parse::<std::net::IpAddr>().is_ok() {
            return Err(NameError::IpAddress);
        }
        let (star, rest) = match trimmed.strip_prefix("*.") {
            Some(rest) if wildcard => (true, rest),
            Some(_) => return Err(NameError::Wildcard),
            None => (false, trimmed),
        };
        if rest.contains('*') {
            return Err(NameError::WildcardPlace);
        }
        if rest.split('.').any(str::is_empty) {
            return Err(NameError::EmptyLabel);
        }
        // UTS #46 mapping only: the label rules below give the reasons.
        let ascii = idna::domain_to_ascii(rest).map_err(|_| NameError::Idna)?;
        let labels: Vec<&str> = ascii.split('.').collect();
        if labels.iter().any(|l| l.is_empty()) {
            return Err(NameError::EmptyLabel);
        }
        if labels.len() < 2 {
            return Err(NameError::SingleLabel);
        }
        for label in &labels {
            if label.len() > 63 {
                return Err(NameError::LabelTooLong);
            }
            if !label
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            {
                return Err(NameError::BadCharacter);
            }
            if label.starts_with('-') || label.ends_with('-') {
                return Err(NameError::Hyphen);
            }
        }
        if labels
            .last()
            .is_some_and(|tld| tld.bytes().all(|b| b.is_ascii_digit()))
        {
            return Err(NameError::NumericTld);
        }
        let ascii = if star { format!("*.{ascii}") } else { ascii };
        if ascii.len() > 253 {
            return Err(NameError::TooLong);
        }
        Ok(Self { ascii })
    }

    pub fn as_str(&self) -> &str {
        &self.ascii
    }

    pub fn is_wildcard(&self) -> bool {
        self.ascii.starts_with("*.")
    }
}

impl std::fmt::Display for DomainName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.ascii)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_into_one_form() {
        let ok = |s: &str| DomainName::parse(s, false).map(|d| d.to_string());
        assert_eq!(ok("App.Example.COM.").unwrap(), "app.example.com");
        assert_eq!(ok("bücher.example").unwrap(), "xn--bcher-kva.example");
        assert_eq!(
            ok("xn--bcher-kva.example").unwrap(),
            "xn--bcher-kva.example"
        );
        assert_eq!(ok("a-b.c1.example.io").unwrap(), "a-b.c1.example.io");
        assert_eq!(ok(""), Err(NameError::Empty));
        assert_eq!(ok("203.0.113.7"), Err(NameError::IpAddress));
        assert_eq!(ok("[2001:db8::1]"), Err(NameError::IpAddress));
        assert_eq!(ok("localhost"), Err(NameError::SingleLabel));
        assert_eq!(ok("a..example.com"), Err(NameError::EmptyLabel));
        assert_eq!(ok("-a.example.com"), Err(NameError::Hyphen));
        assert_eq!(ok("a_b.example.com"), Err(NameError::BadCharacter));
        assert_eq!(ok("a b.example.com"), Err(NameError::BadCharacter));
        assert_eq!(ok("xn--zz.example"), Err(NameError::Idna));
        assert_eq!(ok("app.example.123"), Err(NameError::NumericTld));
        assert_eq!(ok("*.example.com"), Err(NameError::Wildcard));
        assert_eq!(
            ok(&format!("{}.com", "a".repeat(64))),
            Err(NameError::LabelTooLong)
        );
        let long = format!("{}.com", vec!["a".repeat(60); 5].join("."));
        assert_eq!(ok(&long), Err(NameError::TooLong));
        let wild = DomainName::parse("*.Example.com", true).unwrap();
        assert!(wild.is_wildcard());
        assert_eq!(wild.as_str(), "*.example.com");
        assert_eq!(
            DomainName::parse("a.*.example.com", true),
            Err(NameError::WildcardPlace)
        );
    }
}
