//! Commands for a remote shell, built only from fixed program text and values
//! that passed a strict check, each argument shell-quoted. There is no way to
//! put unchecked text into a command.

use std::fmt;

/// A value that may be used as one argument of a remote command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Arg(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} {value:?} is not allowed: {rule}")]
pub struct Refused {
    pub what: &'static str,
    pub value: String,
    pub rule: &'static str,
}

fn refuse(what: &'static str, value: &str, rule: &'static str) -> Refused {
    Refused {
        what,
        value: value.chars().take(80).collect(),
        rule,
    }
}

impl Arg {
    /// A name: letters, digits, `.`, `_`, `-`, 1–128 characters, not starting
    /// with `-` (so it can never be read as an option).
    pub fn name(value: &str) -> Result<Arg, Refused> {
        let ok = (1..=128).contains(&value.len())
            && !value.starts_with('-')
            && value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if ok {
            Ok(Arg(value.to_owned()))
        } else {
            Err(refuse(
                "name",
                value,
                "letters, digits, '.', '_', '-', not starting with '-'",
            ))
        }
    }

    /// An absolute path without `..`, control characters or quotes.
    pub fn path(value: &str) -> Result<Arg, Refused> {
        let ok = value.starts_with('/')
            && value.len() <= 4096
            && !value.split('/').any(|part| part == "..")
            && !value
                .chars()
                .any(|c| c.is_control() || c == '\'' || c == '"' || c == '\\');
        if ok {
            Ok(Arg(value.to_owned()))
        } else {
            Err(refuse(
                "path",
                value,
                "an absolute path without '..', quotes or control characters",
            ))
        }
    }

    /// A number.
    pub fn number(value: u64) -> Arg {
        Arg(value.to_string())
    }

    /// A process group, as `kill` takes it: `-<pgid>`.
    pub fn process_group(pgid: u32) -> Arg {
        Arg(format!("-{pgid}"))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A command line for `sh -c`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShellCommand(String);

impl ShellCommand {
    /// `program` is fixed text written in Berth's source, never user input.
    pub fn new(program: &'static str) -> Self {
        ShellCommand(program.to_owned())
    }

    pub fn arg(mut self, arg: &Arg) -> Self {
        self.0.push(' ');
        // Every checked value quotes; NUL is refused by every check above.
        self.0
            .push_str(&shlex::try_quote(arg.as_str()).expect("checked args have no NUL"));
        self
    }

    /// Fixed text (an operator, a flag) written in Berth's source.
    pub fn raw(mut self, text: &'static str) -> Self {
        self.0.push(' ');
        self.0.push_str(text);
        self
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ShellCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A login name on a server: `[a-z_][a-z0-9_-]*`, at most 32 characters (the
/// portable subset useradd accepts).
pub fn check_username(value: &str) -> Result<(), Refused> {
    let mut bytes = value.bytes();
    let ok = (1..=32).contains(&value.len())
        && bytes
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b == b'_')
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(refuse(
            "username",
            value,
            "lower-case letters, digits, '_', '-', starting with a letter or '_'",
        ))
    }
}

/// A server address: an IP address, or a DNS name of letters, digits and
/// hyphens in dot-separated labels.
pub fn check_host(value: &str) -> Result<(), Refused> {
    if value.parse::<std::net::IpAddr>().is_ok() {
        return Ok(());
    }
    let label_ok = |l: &str| {
        (1..=63).contains(&l.len())
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    let name = value.strip_suffix('.').unwrap_or(value);
    let ok = (1..=253).contains(&name.len())
        && name.split('.').all(label_ok)
        && !name
            .rsplit('.')
            .next()
            .is_some_and(|tld| tld.bytes().all(|b| b.is_ascii_digit()));
    if ok {
        Ok(())
    } else {
        Err(refuse("host", value, "an IP address or a DNS name"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn injection_attempts_are_refused() {
        for bad in [
            "a;rm -rf /",
            "$(id)",
            "`id`",
            "a b",
            "-rf",
            "a|b",
            "a&&b",
            "",
            "x\ny",
        ] {
            assert!(Arg::name(bad).is_err(), "{bad:?}");
        }
        for bad in ["relative", "/a/../etc", "/a'b", "/a\"b", "/a\nb", "/a\\b"] {
            assert!(Arg::path(bad).is_err(), "{bad:?}");
        }
        for bad in ["Root", "1abc", "a;b", "a b", "$(id)", "", &"a".repeat(33)] {
            assert!(check_username(bad).is_err(), "{bad:?}");
        }
        for bad in [
            "a;b",
            "host name",
            "$(id)",
            "-a.b",
            "a..b",
            "1.2.3",
            "x`id`",
        ] {
            assert!(check_host(bad).is_err(), "{bad:?}");
        }
        for good in [
            "127.0.0.5",
            "::1",
            "vps-1.example.com",
            "localhost",
            "example.com.",
        ] {
            assert!(check_host(good).is_ok(), "{good:?}");
        }
        assert!(check_username("deploy_user-1").is_ok());
    }

    #[test]
    fn arguments_are_quoted() {
        let path = Arg::path("/srv/my app/$HOME").unwrap();
        let cmd = ShellCommand::new("ls").raw("-la").arg(&path);
        assert_eq!(cmd.as_str(), "ls -la '/srv/my app/$HOME'");
        let name = Arg::name("web.1").unwrap();
        assert_eq!(
            ShellCommand::new("docker inspect").arg(&name).as_str(),
            "docker inspect web.1"
        );
    }
}
