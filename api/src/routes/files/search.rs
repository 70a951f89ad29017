//! Search by name under a directory: breadth first, links reported and never
//! entered (so a link loop is one more entry, not a loop), cut at a depth,
//! at a count of matches and at a count of directories read.

use axum::extract::State;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{FileEntry, connect, file_entry, paths};
use crate::access::Action;
use crate::auth::Principal;
use crate::envelope::{Envelope, Path, Query};
use crate::error::{ApiError, FieldError};
use crate::routes::servers::pinned_server;
use crate::state::AppState;

const DEFAULT_DEPTH: u32 = 8;
const MAX_DEPTH: u32 = 32;
const DEFAULT_LIMIT: usize = 200;
const MAX_LIMIT: usize = 1000;
/// Directories one search reads at most, whatever it found.
const MAX_DIRECTORIES: usize = 5000;
/// Entries read from one directory at most.
const MAX_PER_DIRECTORY: usize = 10_000;

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(rename_all = "camelCase")]
pub struct SearchQuery {
    /// The directory searched, absolute.
    path: Option<String>,
    /// Part of the name, any case (1 to 255 characters).
    query: Option<String>,
    /// The name's extension, without the dot (`log`, `tar.gz`); any case.
    extension: Option<String>,
    /// Levels below `path` searched, 1 to 32 (8).
    max_depth: Option<u32>,
    /// Matches answered at most, 1 to 1000 (200).
    limit: Option<usize>,
}

#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SearchResults {
    path: String,
    /// In the order found: nearer levels first.
    matches: Vec<FileEntry>,
    /// The search stopped at `limit` matches, at the depth, or at 5,000
    /// directories: more may match.
    truncated: bool,
}

struct Wanted {
    name_part: Option<String>,
    extension: Option<String>,
}

impl Wanted {
    fn matches(&self, name: &str) -> bool {
        let name = name.to_lowercase();
        self.name_part
            .as_ref()
            .is_none_or(|part| name.contains(part))
            && self
                .extension
                .as_ref()
                .is_none_or(|ext| name.len() > ext.len() + 1 && name.ends_with(&format!(".{ext}")))
    }
}

fn field(name: &'static str, message: &'static str) -> ApiError {
    ApiError::validation(vec![FieldError::new(name, message)])
}

fn wanted(query: &SearchQuery) -> Result<Wanted, ApiError> {
    let clean = |value: &Option<String>, name: &'static str| -> Result<Option<String>, ApiError> {
        match value.as_deref() {
            None | Some("") => Ok(None),
            Some(v)
                if v.chars().count() > 255
                    || v.chars().any(char::is_control)
                    || v.contains('/') =>
            {
                Err(field(
                    name,
                    "must be 1 to 255 characters, no / or control characters",
                ))
            }
            Some(v) => Ok(Some(v.to_lowercase())),
        }
    };
    let name_part = clean(&query.query, "query")?;
    let extension = clean(&query.extension, "extension")?
        .map(|e| e.trim_start_matches('.').to_owned())
        .filter(|e| !e.is_empty());
    if name_part.is_none() && extension.is_none() {
        return Err(field("query", "give a query, an extension, or both"));
    }
    Ok(Wanted {
        name_part,
        extension,
    })
}

/// Entries under a directory whose name holds `query` and ends in
/// `.extension`. Links are matched by their own name and never entered.
#[utoipa::path(get, path = "/files/{id}/search", tag = "files",
    params(("id" = Uuid, Path, description = "Server id"), SearchQuery), responses(
    (status = 200, description = "What matched", body = SearchResults),
    (status = 400, description = "Invalid path or search", body = crate::error::ErrorEnvelope),
    (status = 404, description = "No such server of yours, or no such directory", body = crate::error::ErrorEnvelope)))]
pub async fn search(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<Uuid>,
    Query(query): Query<SearchQuery>,
) -> Result<Envelope<SearchResults>, ApiError> {
    let server = pinned_server(&state, &principal, id, Action::Read).await?;
    let path = paths::required("path", query.path.as_deref())?;
    let wanted = wanted(&query)?;
    let max_depth = query.max_depth.unwrap_or(DEFAULT_DEPTH);
    if !(1..=MAX_DEPTH).contains(&max_depth) {
        return Err(field("maxDepth", "must be 1 to 32"));
    }
    let limit = query.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(field("limit", "must be 1 to 1000"));
    }
    let (_session, files) = connect(&state, &server).await?;
    if files.lstat(&path).await?.kind != berth_ssh::Kind::Directory {
        return Err(ApiError::Conflict(format!("{path} is not a directory")));
    }
    let mut matches = Vec::new();
    let mut truncated = false;
    let mut level = vec![path.clone()];
    let mut read = 0usize;
    'levels: for depth in 1..=max_depth {
        let mut next = Vec::new();
        for dir in level {
            if read == MAX_DIRECTORIES {
                truncated = true;
                break 'levels;
            }
            read += 1;
            // A directory that went, or that the login may not read, is
            // passed over: the search is of what can be seen.
            let listing = match files.list(&dir, MAX_PER_DIRECTORY).await {
                Ok(listing) => listing,
                Err(
                    berth_ssh::FileError::NotFound(_) | berth_ssh::FileError::PermissionDenied(_),
                ) => continue,
                Err(e) => return Err(e.into()),
            };
            truncated |= listing.truncated;
            for entry in listing.entries {
                if entry.kind == berth_ssh::Kind::Directory {
                    next.push(paths::join(&dir, &entry.name));
                }
                if wanted.matches(&entry.name) {
                    if matches.len() == limit {
                        truncated = true;
                        break 'levels;
                    }
                    matches.push(file_entry(&dir, entry));
                }
            }
        }
        if depth == max_depth && !next.is_empty() {
            truncated = true;
        }
        level = next;
    }
    Ok(Envelope::ok(SearchResults {
        path,
        matches,
        truncated,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_by_part_and_extension_in_any_case() {
        let wanted = Wanted {
            name_part: Some("app".into()),
            extension: Some("log".into()),
        };
        assert!(wanted.matches("App-2026.LOG"));
        assert!(!wanted.matches("app.txt"));
        assert!(!wanted.matches("other.log"));
        let by_extension = Wanted {
            name_part: None,
            extension: Some("tar.gz".into()),
        };
        assert!(by_extension.matches("site.tar.gz"));
        assert!(!by_extension.matches(".tar.gz"));
        assert!(!by_extension.matches("tar.gz"));
    }
}
