//! Role-based access control (DESIGN.md C8, issue 4 §6): roles grant permissions; every route
//! declares the one it needs (keel-api's `policy`), and a caller holds a permission only through
//! a role.
//!
//! The roles are fixed here, not configured: three of them cover keel's surfaces, and a fixed
//! table can be reviewed in one place (least privilege: `operator` may run the error hospital but
//! not read other users; only `admin` holds everything).

use crate::users::UserId;

/// Something a caller may be allowed to do beyond acting on its own account.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Permission {
    /// `GET /users`: list every account.
    UsersList,
    /// Read any account (`GET /users/{id}`, its jobs and exports).
    UsersRead,
    /// Change or erase any account, create accounts with roles, invite.
    UsersWrite,
    /// Disable and enable accounts.
    AccountsManage,
    /// Read the authentication audit log.
    AuditRead,
    /// Register OpenID Connect clients.
    ClientsManage,
    /// Look at the error hospital (`GET /admin/hospital…`).
    HospitalRead,
    /// Replay, edit and discard patients.
    HospitalWrite,
}

impl Permission {
    pub const ALL: [Self; 8] = [
        Self::UsersList,
        Self::UsersRead,
        Self::UsersWrite,
        Self::AccountsManage,
        Self::AuditRead,
        Self::ClientsManage,
        Self::HospitalRead,
        Self::HospitalWrite,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::UsersList => "users:list",
            Self::UsersRead => "users:read",
            Self::UsersWrite => "users:write",
            Self::AccountsManage => "accounts:manage",
            Self::AuditRead => "audit:read",
            Self::ClientsManage => "clients:manage",
            Self::HospitalRead => "hospital:read",
            Self::HospitalWrite => "hospital:write",
        }
    }
}

/// The roles keel knows. An account holds any number of them; none is the plain user.
pub const ROLES: [&str; 2] = ["admin", "operator"];

/// What a role grants; an unknown role grants nothing.
pub fn role_permissions(role: &str) -> &'static [Permission] {
    match role {
        "admin" => &Permission::ALL,
        "operator" => &[Permission::HospitalRead, Permission::HospitalWrite],
        _ => &[],
    }
}

/// Whether `role` is one keel knows.
pub fn is_role(role: &str) -> bool {
    ROLES.contains(&role)
}

/// Who may make an account through `POST /users` without being an admin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SignupMode {
    /// Anyone, with a password (the default of `keel up`).
    #[default]
    Open,
    /// Only people an admin invited (they choose a password from the invitation).
    Invite,
    /// Nobody: admins make every account.
    Closed,
}

/// Who sent a request, as established by the API's guard: the account and its roles.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub user: UserId,
    pub roles: Vec<String>,
}

impl Caller {
    pub fn can(&self, permission: Permission) -> bool {
        self.roles
            .iter()
            .any(|role| role_permissions(role).contains(&permission))
    }

    /// Whether the caller may act on `user` with `permission`: its own account always, any
    /// other only with the permission.
    pub fn can_on(&self, user: UserId, permission: Permission) -> bool {
        self.user == user || self.can(permission)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(roles: &[&str]) -> Caller {
        Caller {
            user: UserId::generate(),
            roles: roles.iter().map(|r| (*r).to_owned()).collect(),
        }
    }

    #[test]
    fn admins_hold_everything_and_plain_users_nothing() {
        let admin = caller(&["admin"]);
        let user = caller(&[]);
        for p in Permission::ALL {
            assert!(admin.can(p), "{}", p.as_str());
            assert!(!user.can(p), "{}", p.as_str());
        }
    }

    #[test]
    fn operators_run_the_hospital_and_nothing_else() {
        let operator = caller(&["operator"]);
        let granted: Vec<_> = Permission::ALL
            .into_iter()
            .filter(|p| operator.can(*p))
            .collect();
        assert_eq!(
            granted,
            [Permission::HospitalRead, Permission::HospitalWrite]
        );
        assert!(
            !caller(&["root"]).can(Permission::UsersRead),
            "unknown role"
        );
    }

    #[test]
    fn everyone_acts_on_their_own_account() {
        let user = caller(&[]);
        assert!(user.can_on(user.user, Permission::UsersWrite));
        assert!(!user.can_on(UserId::generate(), Permission::UsersWrite));
        assert!(caller(&["admin"]).can_on(UserId::generate(), Permission::UsersWrite));
    }
}
