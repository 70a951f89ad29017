//! Who calls, what each route needs, and what each caller must be answered.

use reqwest::Method;

/// Who calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Who {
    Outsider,
    /// Another user's API token with every scope.
    OutsiderToken,
    /// A DEVELOPER's token without the scopes the routes need.
    TokenWithoutScope,
    Viewer,
    Developer,
    /// A DEVELOPER's token with every scope.
    TokenWithScope,
    Admin,
    Owner,
}

/// In the order they call: the denied before the allowed, so a destructive
/// route is first tried by those who must not manage it.
pub(super) const CALLERS: [Who; 8] = [
    Who::Outsider,
    Who::OutsiderToken,
    Who::TokenWithoutScope,
    Who::Viewer,
    Who::Developer,
    Who::TokenWithScope,
    Who::Admin,
    Who::Owner,
];

impl Who {
    /// Their role in the project.
    fn role(self) -> Option<u8> {
        match self {
            Who::Outsider | Who::OutsiderToken => None,
            Who::Viewer => Some(0),
            Who::Developer | Who::TokenWithScope | Who::TokenWithoutScope => Some(1),
            Who::Admin => Some(2),
            Who::Owner => Some(3),
        }
    }

    fn is_token(self) -> bool {
        matches!(
            self,
            Who::OutsiderToken | Who::TokenWithScope | Who::TokenWithoutScope
        )
    }
}

/// What a route needs.
#[derive(Debug, Clone, Copy)]
pub(super) enum Needs {
    /// A project role at least this (0 VIEWER … 3 OWNER) on a project resource.
    Role(u8),
    /// The server's owner: servers are never shared.
    ServerOwner,
    /// The DEVELOPER's own notification.
    DevelopersOwn,
    /// The DEVELOPER's own account item: a signed-in session only.
    DevelopersSession,
    /// Anyone (a public avatar).
    Anyone,
    /// The DEVELOPER's avatar, public by id: anyone else is refused, not
    /// told it is missing.
    Uploader,
    /// An invitation to an address none of the callers has.
    NoCaller,
    /// The platform's administration: none of the callers is an administrator.
    Administrator,
}

#[derive(Debug, PartialEq, Eq)]
pub(super) enum Expect {
    Allowed,
    Forbidden,
    NotFound,
}

pub(super) fn expect(who: Who, needs: Needs) -> Expect {
    match needs {
        Needs::Role(least) => match who.role() {
            None => Expect::NotFound,
            Some(_) if who == Who::TokenWithoutScope => Expect::Forbidden,
            Some(role) if role < least => Expect::Forbidden,
            Some(_) => Expect::Allowed,
        },
        Needs::ServerOwner => match who {
            Who::Owner => Expect::Allowed,
            _ => Expect::NotFound,
        },
        Needs::DevelopersOwn => match who {
            Who::Developer | Who::TokenWithScope => Expect::Allowed,
            Who::TokenWithoutScope => Expect::Forbidden,
            _ => Expect::NotFound,
        },
        Needs::DevelopersSession => match who {
            _ if who.is_token() => Expect::Forbidden,
            Who::Developer => Expect::Allowed,
            _ => Expect::NotFound,
        },
        Needs::Anyone => Expect::Allowed,
        Needs::Uploader => match who {
            Who::Developer => Expect::Allowed,
            _ => Expect::Forbidden,
        },
        Needs::NoCaller => Expect::NotFound,
        Needs::Administrator => Expect::Forbidden,
    }
}

pub(super) struct Row {
    pub(super) method: Method,
    /// The documented path, `{…}` and all.
    pub(super) path: &'static str,
    pub(super) needs: Needs,
    /// After the first allowed caller the resource is gone: only that one's
    /// answer says anything.
    pub(super) destructive: bool,
    pub(super) websocket: bool,
    /// Takes a multipart form (an empty one is sent).
    pub(super) multipart: bool,
}

fn row(method: Method, path: &'static str, needs: Needs) -> Row {
    Row {
        method,
        path,
        needs,
        destructive: false,
        websocket: false,
        multipart: false,
    }
}

fn multipart(mut r: Row) -> Row {
    r.multipart = true;
    r
}

fn destructive(mut r: Row) -> Row {
    r.destructive = true;
    r
}

fn websocket(mut r: Row) -> Row {
    r.websocket = true;
    r
}

const VIEWER: u8 = 0;
const DEVELOPER: u8 = 1;
const ADMIN: u8 = 2;
const OWNER: u8 = 3;

/// Every route that takes a resource id, in the order the matrix calls them.
pub(super) fn table() -> Vec<Row> {
    use Method as M;
    use Needs::*;
    vec![
        row(M::GET, "/projects/{id}", Role(VIEWER)),
        row(M::GET, "/projects/{id}/members", Role(VIEWER)),
        row(M::PATCH, "/projects/{id}", Role(ADMIN)),
        row(M::POST, "/projects/{id}/invites", Role(ADMIN)),
        row(M::PATCH, "/projects/{id}/members/{userId}", Role(ADMIN)),
        // The owner's own id: refused as a transfer after authorization.
        row(M::POST, "/projects/{id}/transfer", Role(OWNER)),
        row(M::GET, "/deployments/{id}", Role(VIEWER)),
        row(M::GET, "/deployments/{id}/releases", Role(VIEWER)),
        row(
            M::GET,
            "/deployments/{id}/releases/{number}/logs",
            Role(VIEWER),
        ),
        row(M::GET, "/deployments/{id}/deploy-key", Role(VIEWER)),
        row(M::GET, "/deployments/{id}/preflight", Role(VIEWER)),
        websocket(row(M::GET, "/deployments/{id}/logs/stream", Role(VIEWER))),
        websocket(row(M::GET, "/deployments/{id}/runtime-logs", Role(VIEWER))),
        row(M::GET, "/deployments/{id}/env", Role(DEVELOPER)),
        row(M::PUT, "/deployments/{id}/env", Role(DEVELOPER)),
        row(M::GET, "/deployments/{id}/webhook", Role(DEVELOPER)),
        row(M::POST, "/deployments/{id}/webhook/rotate", Role(DEVELOPER)),
        row(M::POST, "/deployments/{id}/redeploy", Role(DEVELOPER)),
        row(M::POST, "/deployments/{id}/rollback", Role(DEVELOPER)),
        row(M::POST, "/deployments/{id}/stop", Role(DEVELOPER)),
        row(M::POST, "/deployments/{id}/restart", Role(DEVELOPER)),
        row(M::POST, "/deployments/{id}/cancel", Role(DEVELOPER)),
        row(M::PUT, "/deployments/{id}/project", Role(ADMIN)),
        row(M::GET, "/jobs/{id}", Role(VIEWER)),
        row(M::GET, "/jobs/{id}/logs", Role(VIEWER)),
        row(M::POST, "/jobs/{id}/cancel", Role(DEVELOPER)),
        row(M::GET, "/domains/{id}", Role(VIEWER)),
        row(M::POST, "/domains/{id}/ssl", Role(DEVELOPER)),
        row(M::DELETE, "/domains/{id}", Role(DEVELOPER)),
        row(M::DELETE, "/deployments/{id}", Role(ADMIN)),
        row(M::GET, "/servers/{id}", ServerOwner),
        row(M::PATCH, "/servers/{id}", ServerOwner),
        row(M::GET, "/servers/{id}/health", ServerOwner),
        row(M::GET, "/servers/{id}/metrics", ServerOwner),
        row(M::POST, "/servers/{id}/host-key", ServerOwner),
        row(M::POST, "/servers/{id}/validate", ServerOwner),
        row(M::GET, "/files/{id}/info", ServerOwner),
        row(M::GET, "/files/{id}/list", ServerOwner),
        row(M::GET, "/files/{id}/read", ServerOwner),
        row(M::GET, "/files/{id}/properties", ServerOwner),
        row(M::POST, "/files/{id}/create", ServerOwner),
        row(M::PUT, "/files/{id}/save", ServerOwner),
        row(M::PUT, "/files/{id}/rename", ServerOwner),
        row(M::DELETE, "/files/{id}/delete", ServerOwner),
        row(M::GET, "/files/{id}/search", ServerOwner),
        row(M::GET, "/files/{id}/download", ServerOwner),
        row(M::PUT, "/files/{id}/copy", ServerOwner),
        multipart(row(M::POST, "/files/{id}/upload", ServerOwner)),
        row(M::POST, "/files/{id}/compress", ServerOwner),
        row(M::POST, "/files/{id}/decompress", ServerOwner),
        row(M::DELETE, "/servers/{id}", ServerOwner),
        row(M::PATCH, "/notifications/{id}/read", DevelopersOwn),
        destructive(row(M::DELETE, "/notifications/{id}", DevelopersOwn)),
        row(M::GET, "/uploads/{id}", Anyone),
        destructive(row(M::DELETE, "/uploads/{id}", Uploader)),
        destructive(row(M::DELETE, "/sessions/{id}", DevelopersSession)),
        destructive(row(M::DELETE, "/tokens/{id}", DevelopersSession)),
        row(M::POST, "/invitations/{id}/accept", NoCaller),
        row(M::POST, "/invitations/{id}/decline", NoCaller),
        destructive(row(
            M::DELETE,
            "/projects/{id}/invites/{inviteId}",
            Role(ADMIN),
        )),
        destructive(row(
            M::DELETE,
            "/projects/{id}/members/{userId}",
            Role(ADMIN),
        )),
        destructive(row(M::DELETE, "/projects/{id}", Role(OWNER))),
        row(M::GET, "/admin/users/{id}", Administrator),
        row(M::DELETE, "/admin/users/{id}", Administrator),
        row(M::PUT, "/admin/users/{id}/role", Administrator),
        row(M::PUT, "/admin/users/{id}/status", Administrator),
        row(M::DELETE, "/admin/deployments/{id}", Administrator),
        row(M::PUT, "/admin/contact/{id}", Administrator),
        row(M::GET, "/admin/backups/{id}", Administrator),
        row(M::DELETE, "/admin/backups/{id}", Administrator),
        row(M::GET, "/admin/backups/{id}/download", Administrator),
        row(M::POST, "/admin/backups/{id}/restore", Administrator),
    ]
}

/// Path parameters that are not resource ids.
pub(super) const NOT_RESOURCES: [&str; 2] =
    ["/auth/oauth/{provider}", "/auth/oauth/{provider}/callback"];
