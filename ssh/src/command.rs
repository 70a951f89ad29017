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

    /// A URL Berth may hand to `git` or `curl`: `https`, `http`, `ssh` or
    /// `git` scheme (or scp-like `user@host:path` for git), no control
    /// characters, spaces or quotes, not starting with `-`, at most 2048.
    /// Credentials in an http(s) URL are refused (they would show in `ps`).
    pub fn url(value: &str) -> Result<Arg, Refused> {
        let clean = (1..=2048).contains(&value.len())
            && !value.starts_with('-')
            && !value.chars().any(|c| {
                c.is_control() || c.is_whitespace() || matches!(c, '\'' | '"' | '\\' | '`')
            });
        let scp_like = |v: &str| {
            v.split_once(':').is_some_and(|(who, path)| {
                !who.contains('/')
                    && who.split_once('@').is_some_and(|(user, host)| {
                        check_username(user).is_ok() && check_host(host).is_ok()
                    })
                    && !path.is_empty()
                    && !path.starts_with('-')
            })
        };
        let ok = clean
            && match url::Url::parse(value) {
                Ok(u) => match u.scheme() {
                    "https" | "http" => {
                        u.host_str().is_some() && u.password().is_none() && u.username().is_empty()
                    }
                    "ssh" | "git" => u.host_str().is_some() && u.password().is_none(),
                    _ => false,
                },
                Err(_) => scp_like(value),
            };
        if ok {
            Ok(Arg(value.to_owned()))
        } else {
            Err(refuse(
                "URL",
                value,
                "an https, http, ssh or git URL (or user@host:path) without credentials, spaces or quotes",
            ))
        }
    }

    /// A git branch, tag or commit, as `git check-ref-format` allows it, more
    /// strictly: letters, digits, `.`, `_`, `-`, `/`, not starting with `-`
    /// or `/`, no `..`, `//`, `@{`, no trailing `/`, `.` or `.lock`; 1–255.
    pub fn git_ref(value: &str) -> Result<Arg, Refused> {
        let ok = (1..=255).contains(&value.len())
            && !value.starts_with(['-', '/', '.'])
            && !value.ends_with(['/', '.'])
            && !value.ends_with(".lock")
            && !value.contains("..")
            && !value.contains("//")
            && !value.contains("/.")
            && value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'/'));
        if ok {
            Ok(Arg(value.to_owned()))
        } else {
            Err(refuse(
                "git ref",
                value,
                "letters, digits, '.', '_', '-', '/', not starting with '-', '/' or '.', no '..'",
            ))
        }
    }

    /// An environment variable's name: `[A-Za-z_][A-Za-z0-9_]*`, at most 255.
    /// Its value never becomes an argument: it goes through a file or stdin.
    pub fn env_name(value: &str) -> Result<Arg, Refused> {
        let mut bytes = value.bytes();
        let ok = (1..=255).contains(&value.len())
            && bytes
                .next()
                .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
            && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if ok {
            Ok(Arg(value.to_owned()))
        } else {
            Err(refuse(
                "environment variable name",
                value,
                "letters, digits and '_', not starting with a digit",
            ))
        }
    }

    /// A container image reference: `[registry[:port]/]name[:tag][@digest]`,
    /// lower-case path components, at most 255.
    pub fn image(value: &str) -> Result<Arg, Refused> {
        let (rest, digest) = match value.split_once('@') {
            Some((rest, digest)) => (rest, Some(digest)),
            None => (value, None),
        };
        let digest_ok = digest.is_none_or(|d| {
            d.split_once(':').is_some_and(|(algo, hex)| {
                !algo.is_empty()
                    && algo
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
                    && hex.len() >= 32
                    && hex.bytes().all(|b| b.is_ascii_hexdigit())
            })
        });
        // A tag follows the last ':' after the last '/'.
        let (path, tag) = match rest.rsplit_once(':') {
            Some((path, tag)) if !tag.contains('/') => (path, Some(tag)),
            _ => (rest, None),
        };
        let tag_ok = tag.is_none_or(|t| {
            (1..=128).contains(&t.len())
                && !t.starts_with(['.', '-'])
                && t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        });
        let mut parts = path.split('/').peekable();
        let registry = parts.peek().copied().filter(|first| {
            path.contains('/')
                && (first.contains('.') || first.contains(':') || *first == "localhost")
        });
        if registry.is_some() {
            parts.next();
        }
        let registry_ok = registry.is_none_or(|r| {
            let (host, port) = r.split_once(':').unwrap_or((r, "1"));
            check_host(host).is_ok() && port.parse::<u16>().is_ok_and(|p| p > 0)
        });
        let component_ok = |c: &str| {
            !c.is_empty()
                && !c.starts_with(['.', '_', '-'])
                && !c.ends_with(['.', '_', '-'])
                && c.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
                })
        };
        let ok = (1..=255).contains(&value.len())
            && digest_ok
            && tag_ok
            && registry_ok
            && parts.all(component_ok);
        if ok {
            Ok(Arg(value.to_owned()))
        } else {
            Err(refuse(
                "image",
                value,
                "[registry[:port]/]name[:tag][@digest], lower-case path",
            ))
        }
    }

    /// A container label, `key=value`: key of letters, digits, `.`, `-`,
    /// `_`, `/`; value of letters, digits, `.`, `-`, `_`, `:`; at most 255.
    pub fn label(key: &str, value: &str) -> Result<Arg, Refused> {
        let text = format!("{key}={value}");
        let ok = (1..=255).contains(&text.len())
            && !key.is_empty()
            && !key.starts_with('-')
            && key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b'/'))
            && value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':'));
        if ok {
            Ok(Arg(text))
        } else {
            Err(refuse(
                "label",
                &text,
                "key=value of letters, digits, '.', '-', '_'",
            ))
        }
    }

    /// A `--filter` matching a [`Self::label`]: `label=key=value`.
    pub fn label_filter(label: &Arg) -> Arg {
        Arg(format!("label={}", label.0))
    }

    /// A positive decimal (e.g. CPUs for `docker run --cpus`), two places.
    pub fn decimal(value: f64) -> Result<Arg, Refused> {
        if value.is_finite() && value > 0.0 && value < 1e6 {
            Ok(Arg(format!("{value:.2}")))
        } else {
            Err(refuse("number", &value.to_string(), "a positive number"))
        }
    }

    /// A published port, `ip:host_port:container_port`, from typed values.
    pub fn port_mapping(ip: std::net::IpAddr, host_port: u16, container_port: u16) -> Arg {
        match ip {
            std::net::IpAddr::V4(v4) => Arg(format!("{v4}:{host_port}:{container_port}")),
            std::net::IpAddr::V6(v6) => Arg(format!("[{v6}]:{host_port}:{container_port}")),
        }
    }

    /// A file mode for `chmod`, in octal (`0o640` → `640`).
    pub fn file_mode(mode: i32) -> Arg {
        Arg(format!("{:o}", mode & 0o7777))
    }

    /// A number.
    /// `Host: <name>`, for an HTTP check of a site through nginx.
    pub fn host_header(host: &str) -> Result<Arg, Refused> {
        check_host(host)?;
        Ok(Arg(format!("Host: {host}")))
    }

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

    /// ` NAME='value'`: a shell variable set to a checked value (`name` is
    /// fixed text written in Berth's source).
    pub fn set_var(mut self, name: &'static str, value: &Arg) -> Self {
        self.0.push(' ');
        self.0.push_str(name);
        self.0.push('=');
        self.0
            .push_str(&shlex::try_quote(value.as_str()).expect("checked args have no NUL"));
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
    fn deploy_argument_kinds() {
        for good in [
            "https://github.com/acme/app.git",
            "ssh://git@github.com/acme/app.git",
            "git@github.com:acme/app.git",
            "http://127.0.0.1:8080/health",
        ] {
            assert!(Arg::url(good).is_ok(), "{good:?}");
        }
        for bad in [
            "https://user:pw@github.com/a.git",
            "https://token@github.com/a.git",
            "file:///etc/passwd",
            "-uhttps://x",
            "ext::sh -c id",
            "https://a b",
            "https://x/$(id)'",
            "git@host:-oProxyCommand=id",
            "",
        ] {
            assert!(Arg::url(bad).is_err(), "{bad:?}");
        }
        for good in ["main", "release/1.2", "v1.0.0", "3f2a9c1", "feature_x-y"] {
            assert!(Arg::git_ref(good).is_ok(), "{good:?}");
        }
        for bad in [
            "-b", "a..b", "/main", "main/", "x.lock", "a b", "a~1", "a^", "a:b", "@{u}", ".hidden",
            "a/.b",
        ] {
            assert!(Arg::git_ref(bad).is_err(), "{bad:?}");
        }
        for good in ["PORT", "_X", "DATABASE_URL2"] {
            assert!(Arg::env_name(good).is_ok(), "{good:?}");
        }
        for bad in ["1A", "A-B", "A=B", "", "A B", "$A"] {
            assert!(Arg::env_name(bad).is_err(), "{bad:?}");
        }
        for good in [
            "busybox",
            "localhost/busybox:latest",
            "127.0.0.1:5000/team/app:v2",
            "docker.io/library/nginx:1.27-alpine",
            "app@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        ] {
            assert!(Arg::image(good).is_ok(), "{good:?}");
        }
        for bad in [
            "Upper/x",
            "-x",
            "a b",
            "x:",
            "x;id",
            "reg:99999/x",
            "x@sha256:zz",
        ] {
            assert!(Arg::image(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            Arg::label("berth.deployment", "abc-1").unwrap().as_str(),
            "berth.deployment=abc-1"
        );
        assert!(Arg::label("x", "a b").is_err());
        assert!(Arg::label("-x", "1").is_err());
    }

    #[test]
    fn arguments_are_quoted() {
        let path = Arg::path("/srv/my app/$HOME").unwrap();
        let cmd = ShellCommand::new("ls").raw("-la").arg(&path);
        assert_eq!(cmd.as_str(), "ls -la '/srv/my app/$HOME'");
        let set = ShellCommand::new("x;").set_var("KNOWN", &path).raw(";");
        assert_eq!(set.as_str(), "x; KNOWN='/srv/my app/$HOME' ;");
        let name = Arg::name("web.1").unwrap();
        assert_eq!(
            ShellCommand::new("docker inspect").arg(&name).as_str(),
            "docker inspect web.1"
        );
    }
}
