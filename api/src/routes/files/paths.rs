//! Paths from users, checked and normalised before they reach a server.

use crate::error::{ApiError, FieldError};

/// Longer paths than Linux's `PATH_MAX` are refused.
const MAX_PATH_BYTES: usize = 4096;

/// Directories of `/` that a file manager never deletes or moves.
const SYSTEM_DIRECTORIES: [&str; 21] = [
    "bin", "boot", "dev", "etc", "home", "lib", "lib32", "lib64", "libx32", "media", "mnt", "opt",
    "proc", "root", "run", "sbin", "srv", "sys", "tmp", "usr", "var",
];

/// `raw` as an absolute path with `.`, `..` and repeated `/` resolved
/// (`..` at the root stays at the root, as the kernel has it).
pub fn normalise(field: &'static str, raw: &str) -> Result<String, ApiError> {
    let refuse = |message: &str| ApiError::validation(vec![FieldError::new(field, message)]);
    if !raw.starts_with('/') {
        return Err(refuse("must be an absolute path (starting with /)"));
    }
    if raw.len() > MAX_PATH_BYTES {
        return Err(refuse("must be at most 4096 bytes"));
    }
    if raw.chars().any(char::is_control) {
        return Err(refuse("must not hold NUL or control characters"));
    }
    let mut parts: Vec<&str> = Vec::new();
    for part in raw.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            name => parts.push(name),
        }
    }
    Ok(format!("/{}", parts.join("/")))
}

/// The required path parameter `field`, normalised.
pub fn required(field: &'static str, raw: Option<&str>) -> Result<String, ApiError> {
    match raw {
        Some(raw) => normalise(field, raw),
        None => Err(ApiError::validation(vec![FieldError::new(
            field,
            "is required",
        )])),
    }
}

/// `name` under directory `parent` (both from [`normalise`] or the server).
pub fn join(parent: &str, name: &str) -> String {
    if parent == "/" {
        format!("/{name}")
    } else {
        format!("{parent}/{name}")
    }
}

/// The last part of a normalised path (`/` for the root).
pub fn name(path: &str) -> &str {
    match path.rsplit('/').next() {
        Some("") | None => "/",
        Some(name) => name,
    }
}

/// The directory holding a normalised path (`/` for `/` itself).
pub fn parent(path: &str) -> &str {
    match path.rfind('/') {
        Some(0) | None => "/",
        Some(i) => &path[..i],
    }
}

/// Whether `path` is `dir` itself or lies under it (both normalised).
pub fn is_within(path: &str, dir: &str) -> bool {
    path == dir || dir == "/" || path.starts_with(&format!("{dir}/"))
}

/// Refuses `/` and the system's top-level directories, for deletes and moves.
pub fn check_removable(field: &'static str, path: &str) -> Result<(), ApiError> {
    let top = path.trim_start_matches('/');
    if path == "/" || (!top.contains('/') && SYSTEM_DIRECTORIES.contains(&top)) {
        return Err(ApiError::validation(vec![FieldError::new(
            field,
            format!("{path} is / or a system directory, which the file manager leaves alone"),
        )]));
    }
    Ok(())
}

/// A file name for a new entry: one path part, no `/`, no control characters.
pub fn check_name(field: &'static str, name: &str) -> Result<(), ApiError> {
    if name.is_empty()
        || name == "."
        || name == ".."
        || name.contains('/')
        || name.len() > 255
        || name.chars().any(char::is_control)
    {
        return Err(ApiError::validation(vec![FieldError::new(
            field,
            "must be one file name: 1 to 255 bytes, no /, no control characters, not . or ..",
        )]));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_normalised_and_hostile_ones_refused() {
        assert_eq!(normalise("p", "/srv//app/./x/../y").unwrap(), "/srv/app/y");
        assert_eq!(normalise("p", "/../../etc").unwrap(), "/etc");
        assert_eq!(normalise("p", "/").unwrap(), "/");
        assert!(normalise("p", "srv/app").is_err());
        assert!(normalise("p", "/srv/a\0b").is_err());
        assert!(normalise("p", "/srv/a\nb").is_err());
        assert!(normalise("p", &format!("/{}", "a".repeat(4096))).is_err());
    }

    #[test]
    fn the_root_and_system_directories_are_not_removable() {
        for path in ["/", "/etc", "/usr", "/home", "/var"] {
            assert!(check_removable("p", path).is_err(), "{path}");
        }
        for path in ["/etc/app.conf", "/srv/app", "/data", "/home/me/x"] {
            assert!(check_removable("p", path).is_ok(), "{path}");
        }
    }

    #[test]
    fn parts_of_paths() {
        assert_eq!(join("/", "etc"), "/etc");
        assert_eq!(join("/srv", "app"), "/srv/app");
        assert_eq!(name("/srv/app"), "app");
        assert_eq!(name("/"), "/");
        assert_eq!(parent("/srv/app"), "/srv");
        assert_eq!(parent("/srv"), "/");
        assert_eq!(parent("/"), "/");
        assert!(is_within("/srv/app/x", "/srv/app"));
        assert!(is_within("/srv/app", "/srv/app"));
        assert!(!is_within("/srv/apple", "/srv/app"));
        assert!(is_within("/etc", "/"));
        assert!(check_name("n", "a.txt").is_ok());
        for bad in ["", ".", "..", "a/b", "a\u{1}"] {
            assert!(check_name("n", bad).is_err(), "{bad:?}");
        }
    }
}
