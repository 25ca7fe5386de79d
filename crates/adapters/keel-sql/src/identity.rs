//! The `IdentityStore` port once for every engine (migration 0003 of each store crate): the
//! tables use portable column types (text, BIGINT) and the statements `?` placeholders, so the
//! dialects add nothing here.

use async_trait::async_trait;
use keel_domain::{
    AuthEvent, AuthEventQuery, AuthorizationCode, Consent, Credentials, Failures, FederatedLink,
    IdentityStore, OidcClient, RefreshFamily, StoreError, UserId,
};
use sqlx::{AssertSqlSafe, Database, Encode, Executor, IntoArguments, Type};

use crate::Column;
use crate::store::{SqlStore, Statement, StoreDialect, map_err, query};

type Db<D> = <D as crate::Dialect>::Db;

/// `SELECT … FROM identity_credentials`, the columns in [`credentials`]' order.
type CredentialsRow = (
    Option<String>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    String,
    Option<String>,
    Option<i64>,
    String,
    Option<i64>,
    i64,
    i64,
);

const CREDENTIALS_COLUMNS: &str = "password_hash, password_changed_at, email_verified_at, disabled_at, roles, \
     totp_secret, totp_last_step, recovery_codes, last_login_at, token_generation, version";

/// Binds `c`'s columns in [`CREDENTIALS_COLUMNS`]' order (`roles` and `codes` as JSON).
fn bind_credentials<D: StoreDialect>(
    query: Statement<Db<D>>,
    c: &Credentials,
    roles: &str,
    codes: &str,
) -> Statement<Db<D>>
where
    String: Column<Db<D>>,
    i64: Column<Db<D>>,
    Option<i64>: for<'q> Encode<'q, Db<D>>,
    Option<String>: for<'q> Encode<'q, Db<D>>,
{
    query
        .bind(c.password_hash.clone())
        .bind(c.password_changed_at)
        .bind(c.email_verified_at)
        .bind(c.disabled_at)
        .bind(roles.to_owned())
        .bind(c.totp_secret.clone())
        .bind(c.totp_last_step)
        .bind(codes.to_owned())
        .bind(c.last_login_at)
        .bind(c.token_generation)
        .bind(c.version)
}

fn credentials(user_id: UserId, row: CredentialsRow) -> Result<Credentials, StoreError> {
    let list = |raw: &str, what: &str| -> Result<Vec<String>, StoreError> {
        serde_json::from_str(raw).map_err(|_| crate::corrupt(what))
    };
    Ok(Credentials {
        user_id,
        password_hash: row.0,
        password_changed_at: row.1,
        email_verified_at: row.2,
        disabled_at: row.3,
        roles: list(&row.4, "roles")?,
        totp_secret: row.5,
        totp_last_step: row.6,
        recovery_codes: list(&row.7, "recovery codes")?,
        last_login_at: row.8,
        token_generation: row.9,
        version: row.10,
    })
}

/// `SELECT id, subject, client_id, scope, generation, expires_at, revoked, amr,
/// auth_time FROM identity_refresh_families`.
type FamilyRow = (String, String, String, String, i64, i64, i64, String, i64);

fn family(row: FamilyRow) -> Result<RefreshFamily, StoreError> {
    Ok(RefreshFamily {
        id: row.0,
        subject: row.1,
        client_id: row.2,
        scope: row.3,
        generation: u64::try_from(row.4).map_err(|_| crate::corrupt("generation"))?,
        expires_at: row.5,
        revoked: row.6 != 0,
        amr: row.7.split_whitespace().map(str::to_owned).collect(),
        auth_time: row.8,
    })
}

/// `SELECT id, at, actor, action, subject, client, detail FROM identity_audit`.
type AuditRow = (
    i64,
    i64,
    String,
    String,
    Option<String>,
    Option<String>,
    String,
);

/// `SELECT id, name, secret_hash, redirect_uris, created_at FROM identity_clients`.
type ClientRow = (String, String, Option<String>, String, i64);

fn client(row: ClientRow) -> Result<OidcClient, StoreError> {
    Ok(OidcClient {
        id: row.0,
        name: row.1,
        secret_hash: row.2,
        redirect_uris: serde_json::from_str(&row.3).map_err(|_| crate::corrupt("redirect uris"))?,
        created_at: row.4,
    })
}

/// `SELECT client_id, user_id, redirect_uri, scope, nonce, challenge, auth_time, expires_at,
/// amr FROM identity_codes`.
type CodeRow = (
    String,
    String,
    String,
    String,
    Option<String>,
    Option<String>,
    i64,
    i64,
    String,
);

/// `SELECT user_id, client_id, scope, granted_at FROM identity_consents`.
type ConsentRow = (String, String, String, i64);

fn consent(row: ConsentRow) -> Result<Consent, StoreError> {
    Ok(Consent {
        user_id: row.0.parse().map_err(|_| crate::corrupt("user id"))?,
        client_id: row.1,
        scope: row.2,
        granted_at: row.3,
    })
}

fn generation(g: u64) -> Result<i64, StoreError> {
    i64::try_from(g).map_err(|_| crate::corrupt("generation"))
}

/// Writes `c` in the caller's transaction if the stored version is `c.version - 1` (or there is
/// no row and the version is 1), with its roles; `StaleVersion` otherwise.
pub(crate) async fn write_credentials<D: StoreDialect>(
    conn: &mut <Db<D> as Database>::Connection,
    c: &Credentials,
) -> Result<(), StoreError>
where
    for<'a> &'a str: Encode<'a, Db<D>> + Type<Db<D>>,
    Option<i64>: for<'q> Encode<'q, Db<D>>,
    Option<String>: for<'q> Encode<'q, Db<D>>,
    i64: Column<Db<D>>,
    String: Column<Db<D>>,
    <Db<D> as Database>::Arguments: IntoArguments<Db<D>>,
    for<'c> &'c mut <Db<D> as Database>::Connection: Executor<'c, Database = Db<D>>,
{
    let roles = serde_json::to_string(&c.roles).expect("strings serialize");
    let codes = serde_json::to_string(&c.recovery_codes).expect("strings serialize");
    let user = c.user_id.to_string();
    let written = if c.version == 1 {
        let insert = query::<D>(&format!(
            "INSERT INTO identity_credentials ({CREDENTIALS_COLUMNS}, user_id) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        ));
        let res = bind_credentials::<D>(insert, c, &roles, &codes)
            .bind(user.clone())
            .execute(&mut *conn)
            .await;
        match res.map_err(map_err::<D>) {
            Ok(_) => true,
            // Another writer created the row first.
            Err(StoreError::Conflict { .. }) => false,
            Err(e) => return Err(e),
        }
    } else {
        let set: Vec<String> = CREDENTIALS_COLUMNS
            .split(", ")
            .map(|column| format!("{column} = ?"))
            .collect();
        let update = query::<D>(&format!(
            "UPDATE identity_credentials SET {} WHERE user_id = ? AND version = ?",
            set.join(", ")
        ));
        let res = bind_credentials::<D>(update, c, &roles, &codes)
            .bind(user.clone())
            .bind(c.version - 1)
            .execute(&mut *conn)
            .await
            .map_err(map_err::<D>)?;
        D::rows_affected(&res) == 1
    };
    if !written {
        return Err(StoreError::StaleVersion);
    }
    query::<D>("DELETE FROM identity_roles WHERE user_id = ?")
        .bind(user.as_str())
        .execute(&mut *conn)
        .await
        .map_err(map_err::<D>)?;
    for role in &c.roles {
        query::<D>("INSERT INTO identity_roles (role, user_id) VALUES (?, ?)")
            .bind(role.as_str())
            .bind(user.as_str())
            .execute(&mut *conn)
            .await
            .map_err(map_err::<D>)?;
    }
    Ok(())
}

/// Appends `e` to the audit log in the caller's transaction.
pub(crate) async fn insert_audit<D: StoreDialect>(
    conn: &mut <Db<D> as Database>::Connection,
    e: &AuthEvent,
) -> Result<(), StoreError>
where
    for<'a> &'a str: Encode<'a, Db<D>> + Type<Db<D>>,
    Option<String>: for<'q> Encode<'q, Db<D>>,
    i64: Column<Db<D>>,
    String: Column<Db<D>>,
    <Db<D> as Database>::Arguments: IntoArguments<Db<D>>,
    for<'c> &'c mut <Db<D> as Database>::Connection: Executor<'c, Database = Db<D>>,
{
    query::<D>(
        "INSERT INTO identity_audit (at, actor, action, subject, client, detail) \
         VALUES (?, ?, ?, ?, ?, ?)",
    )
    .bind(e.at)
    .bind(e.actor.as_str())
    .bind(e.action.as_str())
    .bind(e.subject.clone())
    .bind(e.client.clone())
    .bind(e.detail.to_string())
    .execute(conn)
    .await
    .map_err(map_err::<D>)
    .map(drop)
}

/// Links an external identity in the caller's transaction; `Conflict` when it is linked already.
pub(crate) async fn insert_link<D: StoreDialect>(
    conn: &mut <Db<D> as Database>::Connection,
    link: &FederatedLink,
) -> Result<(), StoreError>
where
    for<'a> &'a str: Encode<'a, Db<D>> + Type<Db<D>>,
    i64: Column<Db<D>>,
    String: Column<Db<D>>,
    <Db<D> as Database>::Arguments: IntoArguments<Db<D>>,
    for<'c> &'c mut <Db<D> as Database>::Connection: Executor<'c, Database = Db<D>>,
{
    query::<D>(
        "INSERT INTO identity_links (provider, subject, user_id, linked_at) VALUES (?, ?, ?, ?)",
    )
    .bind(link.provider.as_str())
    .bind(link.subject.as_str())
    .bind(link.user_id.to_string())
    .bind(link.linked_at)
    .execute(conn)
    .await
    .map_err(map_err::<D>)
    .map(drop)
}

#[async_trait]
impl<D: StoreDialect> IdentityStore for SqlStore<D>
where
    usize: sqlx::ColumnIndex<<Db<D> as Database>::Row>,
    for<'a> &'a str: Encode<'a, Db<D>> + Type<Db<D>>,
    Option<i64>: for<'q> Encode<'q, Db<D>>,
    Option<String>: for<'q> Encode<'q, Db<D>>,
    i64: Column<Db<D>>,
    String: Column<Db<D>>,
    Vec<u8>: Column<Db<D>>,
    <Db<D> as Database>::Arguments: IntoArguments<Db<D>>,
    for<'c> &'c mut <Db<D> as Database>::Connection: Executor<'c, Database = Db<D>>,
{
    async fn credentials(&self, user: UserId) -> Result<Option<Credentials>, StoreError> {
        let row: Option<CredentialsRow> = sqlx::query_as(AssertSqlSafe(D::sql(&format!(
            "SELECT {CREDENTIALS_COLUMNS} FROM identity_credentials WHERE user_id = ?"
        ))))
        .bind(user.to_string())
        .fetch_optional(&self.pool)
        .await
        .map_err(map_err::<D>)?;
        row.map(|row| credentials(user, row)).transpose()
    }

    async fn put_credentials(&self, c: &Credentials) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await.map_err(map_err::<D>)?;
        write_credentials::<D>(&mut tx, c).await?;
        tx.commit().await.map_err(map_err::<D>)
    }

    async fn holders_of(&self, role: &str, limit: u32) -> Result<Vec<UserId>, StoreError> {
        let rows: Vec<(String,)> = sqlx::query_as(AssertSqlSafe(D::sql(
            "SELECT user_id FROM identity_roles WHERE role = ? ORDER BY user_id LIMIT ?",
        )))
        .bind(role)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(map_err::<D>)?;
        rows.into_iter()
            .map(|(id,)| id.parse().map_err(|_| crate::corrupt("user id")))
            .collect()
    }

    async fn failures(&self, key: &str) -> Result<Failures, StoreError> {
        let row: Option<(i64, i64)> = sqlx::query_as(AssertSqlSafe(D::sql(
            "SELECT count, wait_until FROM identity_failures WHERE failure_key = ?",
        )))
        .bind(key)
        .fetch_optional(&self.pool)
        .await
        .map_err(map_err::<D>)?;
        Ok(
            row.map_or_else(Failures::default, |(count, wait_until)| Failures {
                count: u32::try_from(count).unwrap_or(u32::MAX),
                wait_until,
            }),
        )
    }

    async fn put_failures(&self, key: &str, failures: Failures) -> Result<(), StoreError> {
        if failures == Failures::default() {
            return query::<D>("DELETE FROM identity_failures WHERE failure_key = ?")
                .bind(key)
                .execute(&self.pool)
                .await
                .map_err(map_err::<D>)
                .map(drop);
        }
        // Update, else insert: one statement text for every engine (their upserts differ). A
        // concurrent insert of the same key wins; these are counters of failures, and the
        // other writer's count is as good.
        let res = query::<D>(
            "UPDATE identity_failures SET count = ?, wait_until = ? WHERE failure_key = ?",
        )
        .bind(i64::from(failures.count))
        .bind(failures.wait_until)
        .bind(key)
        .execute(&self.pool)
        .await
        .map_err(map_err::<D>)?;
        if D::rows_affected(&res) == 1 {
            return Ok(());
        }
        match query::<D>(
            "INSERT INTO identity_failures (failure_key, count, wait_until) VALUES (?, ?, ?)",
        )
        .bind(key)
        .bind(i64::from(failures.count))
        .bind(failures.wait_until)
        .execute(&self.pool)
        .await
        .map_err(map_err::<D>)
        {
            Ok(_) | Err(StoreError::Conflict { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn family(&self, id: &str) -> Result<Option<RefreshFamily>, StoreError> {
        let row: Option<FamilyRow> = sqlx::query_as(AssertSqlSafe(D::sql(
            "SELECT id, subject, client_id, scope, generation, expires_at, revoked, amr, auth_time \
             FROM identity_refresh_families WHERE id = ?",
        )))
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .map_err(map_err::<D>)?;
        row.map(family).transpose()
    }

    async fn insert_family(&self, f: &RefreshFamily) -> Result<(), StoreError> {
        query::<D>(
            "INSERT INTO identity_refresh_families (id, subject, client_id, scope, generation, \
             expires_at, revoked, amr, auth_time) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(f.id.as_str())
        .bind(f.subject.as_str())
        .bind(f.client_id.as_str())
        .bind(f.scope.as_str())
        .bind(generation(f.generation)?)
        .bind(f.expires_at)
        .bind(i64::from(f.revoked))
        .bind(f.amr.join(" "))
        .bind(f.auth_time)
        .execute(&self.pool)
        .await
        .map_err(map_err::<D>)
        .map(drop)
    }

    async fn advance_family(&self, f: &RefreshFamily, from: u64) -> Result<bool, StoreError> {
        let res = query::<D>(
            "UPDATE identity_refresh_families SET generation = ?, expires_at = ?, revoked = ? \
             WHERE id = ? AND generation = ? AND revoked = 0",
        )
        .bind(generation(f.generation)?)
        .bind(f.expires_at)
        .bind(i64::from(f.revoked))
        .bind(f.id.as_str())
        .bind(generation(from)?)
        .execute(&self.pool)
        .await
        .map_err(map_err::<D>)?;
        Ok(D::rows_affected(&res) == 1)
    }

    async fn revoke_family(&self, id: &str) -> Result<(), StoreError> {
        query::<D>("UPDATE identity_refresh_families SET revoked = 1 WHERE id = ?")
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(map_err::<D>)
            .map(drop)
    }

    async fn revoke_families_of(&self, subject: &str) -> Result<u64, StoreError> {
        let res = query::<D>(
            "UPDATE identity_refresh_families SET revoked = 1 WHERE subject = ? AND revoked = 0",
        )
        .bind(subject)
        .execute(&self.pool)
        .await
        .map_err(map_err::<D>)?;
        Ok(D::rows_affected(&res))
    }

    async fn signing_keys(&self) -> Result<Option<(String, i64)>, StoreError> {
        sqlx::query_as(AssertSqlSafe(D::sql(
            "SELECT sealed, version FROM identity_signing_keys WHERE id = 1",
        )))
        .fetch_optional(&self.pool)
        .await
        .map_err(map_err::<D>)
    }

    async fn put_signing_keys(&self, sealed: &str, version: i64) -> Result<bool, StoreError> {
        if version == 1 {
            return match query::<D>(
                "INSERT INTO identity_signing_keys (id, sealed, version) VALUES (1, ?, 1)",
            )
            .bind(sealed)
            .execute(&self.pool)
            .await
            .map_err(map_err::<D>)
            {
                Ok(_) => Ok(true),
                Err(StoreError::Conflict { .. }) => Ok(false),
                Err(e) => Err(e),
            };
        }
        let res = query::<D>(
            "UPDATE identity_signing_keys SET sealed = ?, version = ? WHERE id = 1 AND version = ?",
        )
        .bind(sealed)
        .bind(version)
        .bind(version - 1)
        .execute(&self.pool)
        .await
        .map_err(map_err::<D>)?;
        Ok(D::rows_affected(&res) == 1)
    }

    async fn link_identity(&self, link: &FederatedLink) -> Result<bool, StoreError> {
        let mut conn = self.pool.acquire().await.map_err(map_err::<D>)?;
        match insert_link::<D>(&mut conn, link).await {
            Ok(_) => Ok(true),
            Err(StoreError::Conflict { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    async fn linked_account(
        &self,
        provider: &str,
        subject: &str,
    ) -> Result<Option<UserId>, StoreError> {
        let row: Option<(String,)> = sqlx::query_as(AssertSqlSafe(D::sql(
            "SELECT user_id FROM identity_links WHERE provider = ? AND subject = ?",
        )))
        .bind(provider)
        .bind(subject)
        .fetch_optional(&self.pool)
        .await
        .map_err(map_err::<D>)?;
        row.map(|(id,)| id.parse().map_err(|_| crate::corrupt("user id")))
            .transpose()
    }

    async fn links_of(&self, user: UserId) -> Result<Vec<FederatedLink>, StoreError> {
        let rows: Vec<(String, String, i64)> = sqlx::query_as(AssertSqlSafe(D::sql(
            "SELECT provider, subject, linked_at FROM identity_links WHERE user_id = ? \
             ORDER BY provider, subject",
        )))
        .bind(user.to_string())
        .fetch_all(&self.pool)
        .await
        .map_err(map_err::<D>)?;
        Ok(rows
            .into_iter()
            .map(|(provider, subject, linked_at)| FederatedLink {
                provider,
                subject,
                user_id: user,
                linked_at,
            })
            .collect())
    }

    async fn client(&self, id: &str) -> Result<Option<OidcClient>, StoreError> {
        let row: Option<ClientRow> = sqlx::query_as(AssertSqlSafe(D::sql(
            "SELECT id, name, secret_hash, redirect_uris, created_at FROM identity_clients WHERE id = ?",
        )))
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .map_err(map_err::<D>)?;
        row.map(client).transpose()
    }

    async fn put_client(&self, c: &OidcClient) -> Result<(), StoreError> {
        let uris = serde_json::to_string(&c.redirect_uris).expect("strings serialize");
        let mut tx = self.pool.begin().await.map_err(map_err::<D>)?;
        let conn: &mut <Db<D> as Database>::Connection = &mut tx;
        query::<D>("DELETE FROM identity_clients WHERE id = ?")
            .bind(c.id.as_str())
            .execute(&mut *conn)
            .await
            .map_err(map_err::<D>)?;
        query::<D>(
            "INSERT INTO identity_clients (id, name, secret_hash, redirect_uris, created_at) \
             VALUES (?, ?, ?, ?, ?)",
        )
        .bind(c.id.as_str())
        .bind(c.name.as_str())
        .bind(c.secret_hash.clone())
        .bind(uris.as_str())
        .bind(c.created_at)
        .execute(&mut *conn)
        .await
        .map_err(map_err::<D>)?;
        tx.commit().await.map_err(map_err::<D>)
    }

    async fn clients(&self) -> Result<Vec<OidcClient>, StoreError> {
        let rows: Vec<ClientRow> = sqlx::query_as(AssertSqlSafe(D::sql(
            "SELECT id, name, secret_hash, redirect_uris, created_at FROM identity_clients ORDER BY id",
        )))
        .fetch_all(&self.pool)
        .await
        .map_err(map_err::<D>)?;
        rows.into_iter().map(client).collect()
    }

    async fn insert_code(&self, c: &AuthorizationCode) -> Result<(), StoreError> {
        query::<D>(
            "INSERT INTO identity_codes (code_hash, client_id, user_id, redirect_uri, scope, nonce, \
             challenge, auth_time, expires_at, amr) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(c.code_hash.as_str())
        .bind(c.client_id.as_str())
        .bind(c.user_id.to_string())
        .bind(c.redirect_uri.as_str())
        .bind(c.scope.as_str())
        .bind(c.nonce.clone())
        .bind(c.challenge.clone())
        .bind(c.auth_time)
        .bind(c.expires_at)
        .bind(c.amr.join(" "))
        .execute(&self.pool)
        .await
        .map_err(map_err::<D>)
        .map(drop)
    }

    async fn take_code(&self, code_hash: &str) -> Result<Option<AuthorizationCode>, StoreError> {
        let mut tx = self.pool.begin().await.map_err(map_err::<D>)?;
        let conn: &mut <Db<D> as Database>::Connection = &mut tx;
        let row: Option<CodeRow> = sqlx::query_as(AssertSqlSafe(D::sql(
            "SELECT client_id, user_id, redirect_uri, scope, nonce, challenge, auth_time, expires_at, \
             amr FROM identity_codes WHERE code_hash = ?",
        )))
        .bind(code_hash)
        .fetch_optional(&mut *conn)
        .await
        .map_err(map_err::<D>)?;
        let Some(row) = row else {
            return Ok(None);
        };
        // Whoever deletes the row redeems the code: a concurrent take deletes nothing.
        let res = query::<D>("DELETE FROM identity_codes WHERE code_hash = ?")
            .bind(code_hash)
            .execute(&mut *conn)
            .await
            .map_err(map_err::<D>)?;
        if D::rows_affected(&res) != 1 {
            return Ok(None);
        }
        tx.commit().await.map_err(map_err::<D>)?;
        Ok(Some(AuthorizationCode {
            code_hash: code_hash.to_owned(),
            client_id: row.0,
            user_id: row.1.parse().map_err(|_| crate::corrupt("user id"))?,
            redirect_uri: row.2,
            scope: row.3,
            nonce: row.4,
            challenge: row.5,
            auth_time: row.6,
            expires_at: row.7,
            amr: row.8.split_whitespace().map(str::to_owned).collect(),
        }))
    }

    async fn consent(&self, user: UserId, client_id: &str) -> Result<Option<Consent>, StoreError> {
        let row: Option<ConsentRow> = sqlx::query_as(AssertSqlSafe(D::sql(
            "SELECT user_id, client_id, scope, granted_at FROM identity_consents \
             WHERE user_id = ? AND client_id = ?",
        )))
        .bind(user.to_string())
        .bind(client_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(map_err::<D>)?;
        row.map(consent).transpose()
    }

    async fn put_consent(&self, c: &Consent) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await.map_err(map_err::<D>)?;
        let conn: &mut <Db<D> as Database>::Connection = &mut tx;
        query::<D>("DELETE FROM identity_consents WHERE user_id = ? AND client_id = ?")
            .bind(c.user_id.to_string())
            .bind(c.client_id.as_str())
            .execute(&mut *conn)
            .await
            .map_err(map_err::<D>)?;
        query::<D>(
            "INSERT INTO identity_consents (user_id, client_id, scope, granted_at) \
             VALUES (?, ?, ?, ?)",
        )
        .bind(c.user_id.to_string())
        .bind(c.client_id.as_str())
        .bind(c.scope.as_str())
        .bind(c.granted_at)
        .execute(&mut *conn)
        .await
        .map_err(map_err::<D>)?;
        tx.commit().await.map_err(map_err::<D>)
    }

    async fn consents_of(&self, user: UserId) -> Result<Vec<Consent>, StoreError> {
        let rows: Vec<ConsentRow> = sqlx::query_as(AssertSqlSafe(D::sql(
            "SELECT user_id, client_id, scope, granted_at FROM identity_consents \
             WHERE user_id = ? ORDER BY client_id",
        )))
        .bind(user.to_string())
        .fetch_all(&self.pool)
        .await
        .map_err(map_err::<D>)?;
        rows.into_iter().map(consent).collect()
    }

    async fn withdraw_consent(&self, user: UserId, client_id: &str) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await.map_err(map_err::<D>)?;
        let conn: &mut <Db<D> as Database>::Connection = &mut tx;
        let res = query::<D>("DELETE FROM identity_consents WHERE user_id = ? AND client_id = ?")
            .bind(user.to_string())
            .bind(client_id)
            .execute(&mut *conn)
            .await
            .map_err(map_err::<D>)?;
        let withdrawn = D::rows_affected(&res) == 1;
        query::<D>(
            "UPDATE identity_refresh_families SET revoked = 1 \
             WHERE subject = ? AND client_id = ? AND revoked = 0",
        )
        .bind(user.to_string())
        .bind(client_id)
        .execute(&mut *conn)
        .await
        .map_err(map_err::<D>)?;
        tx.commit().await.map_err(map_err::<D>)?;
        Ok(withdrawn)
    }

    async fn append_audit(&self, e: &AuthEvent) -> Result<i64, StoreError> {
        // `RETURNING` on every engine keel runs: SQLite 3.35+, PostgreSQL, MariaDB 10.5+.
        sqlx::query_scalar(AssertSqlSafe(D::sql(
            "INSERT INTO identity_audit (at, actor, action, subject, client, detail) \
             VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
        )))
        .bind(e.at)
        .bind(e.actor.as_str())
        .bind(e.action.as_str())
        .bind(e.subject.clone())
        .bind(e.client.clone())
        .bind(e.detail.to_string())
        .fetch_one(&self.pool)
        .await
        .map_err(map_err::<D>)
    }

    async fn audit(&self, q: &AuthEventQuery) -> Result<Vec<AuthEvent>, StoreError> {
        let mut sql = String::from(
            "SELECT id, at, actor, action, subject, client, detail FROM identity_audit WHERE 1 = 1",
        );
        // Only these fixed fragments are appended; every value is bound.
        for (value, clause) in [
            (q.subject.is_some(), " AND subject = ?"),
            (q.actor.is_some(), " AND actor = ?"),
            (q.action.is_some(), " AND action = ?"),
            (q.before.is_some(), " AND id < ?"),
        ] {
            if value {
                sql.push_str(clause);
            }
        }
        sql.push_str(" ORDER BY id DESC LIMIT ?");
        let sql = D::sql(&sql);
        let mut statement = sqlx::query_as::<_, AuditRow>(AssertSqlSafe(sql));
        for value in [&q.subject, &q.actor, &q.action].into_iter().flatten() {
            statement = statement.bind(value.clone());
        }
        if let Some(before) = q.before {
            statement = statement.bind(before);
        }
        let rows = statement
            .bind(i64::from(q.limit))
            .fetch_all(&self.pool)
            .await
            .map_err(map_err::<D>)?;
        rows.into_iter()
            .map(|row| {
                Ok(AuthEvent {
                    id: row.0,
                    at: row.1,
                    actor: row.2,
                    action: row.3,
                    subject: row.4,
                    client: row.5,
                    detail: serde_json::from_str(&row.6).map_err(|_| crate::corrupt("detail"))?,
                })
            })
            .collect()
    }
}
