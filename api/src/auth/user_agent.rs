//! Device, browser and OS of a session, from its User-Agent (woothee).

use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Device {
    /// `desktop`, `mobile`, `bot`, `appliance` or `unknown`.
    pub device: String,
    pub browser: String,
    pub os: String,
}

pub fn describe(user_agent: Option<&str>) -> Device {
    let unknown = || "unknown".to_owned();
    let Some(result) = user_agent.and_then(|ua| woothee::parser::Parser::new().parse(ua)) else {
        return Device {
            device: unknown(),
            browser: user_agent.map(short).unwrap_or_else(unknown),
            os: unknown(),
        };
    };
    let device = match result.category {
        "pc" => "desktop",
        "smartphone" | "mobilephone" => "mobile",
        "crawler" => "bot",
        "appliance" => "appliance",
        _ => "unknown",
    };
    let named = |s: &str| {
        if s.is_empty() || s == "UNKNOWN" {
            unknown()
        } else {
            s.to_owned()
        }
    };
    let browser = match (named(result.name), result.version) {
        // woothee's name for curl, wget, Go's http client…: their own name says more.
        (name, _) if name == "HTTP Library" || name == "unknown" => {
            user_agent.map(short).unwrap_or_else(unknown)
        }
        (name, v) if v.is_empty() || v == "UNKNOWN" => name,
        (name, v) => format!("{name} {}", v.split('.').next().unwrap_or(v)),
    };
    Device {
        device: device.to_owned(),
        browser,
        os: named(result.os),
    }
}

/// A program's own name (`curl/8.5.0` → `curl`), when woothee does not know it.
fn short(ua: &str) -> String {
    ua.split(['/', ' '])
        .next()
        .filter(|s| !s.is_empty())
        .unwrap_or("unknown")
        .chars()
        .take(40)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn browsers_and_programs() {
        let firefox = describe(Some(
            "Mozilla/5.0 (X11; Linux x86_64; rv:131.0) Gecko/20100101 Firefox/131.0",
        ));
        assert_eq!(firefox.device, "desktop");
        assert_eq!(firefox.browser, "Firefox 131");
        assert_eq!(firefox.os, "Linux");
        let iphone = describe(Some(
            "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.0 Mobile/15E148 Safari/604.1",
        ));
        assert_eq!(iphone.device, "mobile");
        assert_eq!(iphone.os, "iPhone");
        let curl = describe(Some("curl/8.5.0"));
        assert_eq!(curl.browser, "curl");
        assert_eq!(describe(None).browser, "unknown");
    }
}
