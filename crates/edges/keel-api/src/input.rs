//! The JSON request bodies: one struct per body, read by [`crate::extract::JsonBody`] and named
//! as the request schema of its operation in the OpenAPI document, so the document describes
//! what the parser accepts. Unknown fields are refused (`deny_unknown_fields`); values are
//! checked further by the domain's parsers (`UserName::parse`, the password policy, …).

use serde::Deserialize;
use utoipa::ToSchema;

use crate::openapi::{email_schema, name_schema, new_password_schema, roles_schema};

/// Anonymous sign-up (`identity.signup = "open"`): a password, and no roles.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignUpInput {
    #[schema(schema_with = name_schema)]
    pub name: String,
    #[schema(schema_with = email_schema)]
    pub email: String,
    #[schema(schema_with = new_password_schema)]
    pub password: String,
}

/// An account made by an admin (with an admin's bearer token only): with a password, or
/// without one an invitation is mailed. Roles are refused from anyone else (422 `roles`).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AdminAccountInput {
    #[schema(schema_with = name_schema)]
    pub name: String,
    #[schema(schema_with = email_schema)]
    pub email: String,
    #[schema(schema_with = new_password_schema)]
    pub password: Option<String>,
    #[schema(schema_with = roles_schema)]
    pub roles: Option<Vec<String>>,
}

/// The body of `POST /users` and `POST /auth/signup`: which shape applies depends on the
/// caller, so it is `anyOf` the two (a body with a name, an email and a password fits both).
/// `users::create_user` picks the variant from the caller and parses that struct alone.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum NewAccountInput {
    SignUp(SignUpInput),
    ByAdmin(AdminAccountInput),
}

/// The body of `PUT /users/{id}`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UserInput {
    #[schema(schema_with = name_schema)]
    pub name: String,
    #[schema(schema_with = email_schema)]
    pub email: String,
}

/// A token from a mail (`POST /auth/verify-email`).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenInput {
    pub token: String,
}

/// `POST /auth/password/forgot`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EmailInput {
    pub email: String,
}

/// A mailed token and the new password (`/auth/password/reset`, `/auth/invitation/accept`).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenPasswordInput {
    pub token: String,
    #[schema(schema_with = new_password_schema)]
    pub password: String,
}

/// `POST /auth/login`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignInInput {
    pub email: String,
    pub password: String,
    /// A TOTP or recovery code, when the account has a second factor.
    pub second_factor: Option<String>,
    /// A remembered device's token, instead of the second factor.
    pub device_token: Option<String>,
}

/// `POST /auth/refresh` and `POST /auth/logout`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefreshInput {
    pub refresh_token: String,
}

/// `POST /auth/totp/confirm`: the first code of the enrolled authenticator.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CodeInput {
    pub code: String,
}

/// `POST /auth/password`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PasswordChangeInput {
    pub current_password: String,
    #[schema(schema_with = new_password_schema)]
    pub new_password: String,
}

/// `POST /oauth/clients`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClientInput {
    pub client_id: String,
    /// Shown on the consent page; the client id when absent.
    pub name: Option<String>,
    /// Absolute URIs the authorization endpoint may send codes to.
    pub redirect_uris: Vec<String>,
    /// A public client (no secret, PKCE required).
    pub public: Option<bool>,
}
