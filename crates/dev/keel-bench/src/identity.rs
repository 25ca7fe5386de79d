//! `keel-bench identity`: the identity core's costs on this machine — access-token verifications
//! per second (the check every protected request pays), token signing, and login latency at the
//! chosen argon2id parameters (a login is one verification; a sign-up or password change one
//! hash).
//!
//! In-process and CPU-bound: one thread, then every core, so the figures are per core and per
//! machine. The HTTP path around a verification comes with the IdP's routes (issue 4).

use std::time::{Duration, Instant};

use clap::Args;
use keel_credentials::password::{Argon2Params, PasswordHasher};
use keel_credentials::token::{Claims, Expect, KeySet};

#[derive(Args)]
pub(crate) struct IdentityArgs {
    /// Token verifications per thread.
    #[arg(long, default_value_t = 100_000)]
    verifications: u64,
    /// Password verifications (logins) timed, one after another.
    #[arg(long, default_value_t = 40)]
    logins: usize,
    /// argon2id memory in KiB (keel's default: OWASP's minimum, 19456).
    #[arg(long, default_value_t = 19 * 1024)]
    memory_kib: u32,
    /// argon2id passes (keel's default: 2).
    #[arg(long, default_value_t = 2)]
    iterations: u32,
    /// argon2id lanes (keel's default: 1).
    #[arg(long, default_value_t = 1)]
    parallelism: u32,
    /// Where identity.json goes.
    #[arg(long, default_value = "bench/out")]
    out: std::path::PathBuf,
}

pub(crate) fn run(args: IdentityArgs) -> anyhow::Result<()> {
    let now = 1_800_000_000;
    let keys = KeySet::generate(3600);
    let claims = Claims {
        iss: "http://127.0.0.1:8080".into(),
        sub: "018f5c8e-7d3a-7b1e-9a4c-2b6f1d0e3c5a".into(),
        aud: vec!["keel-api".into()],
        exp: now + 300,
        nbf: now,
        iat: now,
        jti: "018f5c8e-7d3a-7b1e-9a4c-2b6f1d0e3c5b".into(),
        extra: serde_json::Map::from_iter([("scope".into(), "users:read users:write".into())]),
    };
    let expect = Expect {
        issuer: claims.iss.clone(),
        audience: "keel-api".into(),
        leeway_secs: 30,
    };
    let token = keys.sign(&claims);
    let verifier = keys.verifier(now);

    let signed = {
        let started = Instant::now();
        let n = args.verifications / 4;
        for _ in 0..n {
            std::hint::black_box(keys.sign(std::hint::black_box(&claims)));
        }
        n as f64 / started.elapsed().as_secs_f64()
    };
    let verify_on = |threads: usize| -> anyhow::Result<f64> {
        let started = Instant::now();
        std::thread::scope(|scope| {
            let handles: Vec<_> = (0..threads)
                .map(|_| {
                    scope.spawn(|| {
                        for _ in 0..args.verifications {
                            let claims =
                                verifier.verify(std::hint::black_box(&token), &expect, now);
                            assert!(claims.is_ok(), "the benchmark's own token verifies");
                        }
                    })
                })
                .collect();
            for handle in handles {
                handle.join().expect("a verification thread");
            }
        });
        Ok((args.verifications * threads as u64) as f64 / started.elapsed().as_secs_f64())
    };
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let verify_one = verify_on(1)?;
    let verify_all = verify_on(cores)?;

    let cached = cached_verifications(args.verifications)?;

    let params = Argon2Params::new(args.memory_kib, args.iterations, args.parallelism)?;
    let hasher = PasswordHasher::new(params);
    let password = "tiger lily 77 on ice";
    let started = Instant::now();
    let stored = hasher.hash(password);
    let hash_time = started.elapsed();
    let mut logins: Vec<Duration> = (0..args.logins.max(1))
        .map(|_| {
            let started = Instant::now();
            assert!(hasher.verify(password, &stored).is_match());
            started.elapsed()
        })
        .collect();
    logins.sort_unstable();
    let pct = |p: f64| logins[((logins.len() - 1) as f64 * p).round() as usize];
    let (p50, p99) = (pct(0.5), pct(0.99));

    println!(
        "keel identity benchmark — Ed25519 (EdDSA) access tokens; argon2id m={} KiB, t={}, p={}; {cores} core(s)\n",
        params.memory_kib(),
        params.iterations(),
        params.parallelism()
    );
    println!("| what | figure |");
    println!("| :--- | ---: |");
    println!("| token verifications/s, 1 thread | {verify_one:.0} |");
    println!("| token verifications/s, {cores} threads | {verify_all:.0} |");
    println!("| tokens signed/s, 1 thread | {signed:.0} |");
    println!(
        "| API path: `AccessTokens::verify_access` of a token seen before, 1 thread | {cached:.0} |"
    );
    println!("| login (password verification) p50 | {:.1} ms |", ms(p50));
    println!("| login (password verification) p99 | {:.1} ms |", ms(p99));
    println!("| password hash (sign-up) | {:.1} ms |", ms(hash_time));
    println!(
        "| logins/s per core at p50 | {:.1} |",
        1.0 / p50.as_secs_f64()
    );
    println!(
        "\nA first verification is {:.1} µs of one core; a token seen before, {:.2} µs.",
        1e6 / verify_one,
        1e6 / cached
    );

    std::fs::create_dir_all(&args.out)?;
    let json = serde_json::json!({
        "token_verifications_per_sec_1_thread": verify_one,
        "token_verifications_per_sec_all_threads": verify_all,
        "threads": cores,
        "tokens_signed_per_sec": signed,
        "api_verifications_per_sec_cached_1_thread": cached,
        "argon2id": {"memory_kib": params.memory_kib(), "iterations": params.iterations(), "parallelism": params.parallelism()},
        "login_ms_p50": ms(p50),
        "login_ms_p99": ms(p99),
        "hash_ms": ms(hash_time),
    });
    let path = args.out.join("identity.json");
    std::fs::write(&path, serde_json::to_string_pretty(&json)?)?;
    eprintln!("[keel-bench identity] wrote {}", path.display());
    Ok(())
}

/// `AccessTokens::verify_access` as the API's bearer extractor calls it, on a token it has verified
/// before (every request of a session after its first): verifications per second, one thread.
fn cached_verifications(n: u64) -> anyhow::Result<f64> {
    use std::sync::Arc;

    use keel_credentials::envelope::Keyring;
    use keel_identity::service::{Idp, IdpSettings, SignIn};

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let dir = tempfile::tempdir()?;
        let url = format!("sqlite://{}", dir.path().join("keel.db").display());
        let store = keel_sql_sqlite::SqliteStore::connect(
            &url,
            &keel_sql_sqlite::PoolSettings {
                max_connections: 2,
                acquire_timeout: Duration::from_secs(5),
            },
        )
        .await?;
        store.migrate().await?;
        let idp = Idp::new(
            Arc::new(keel_domain::Uncached(Arc::new(store.clone()))),
            Arc::new(store),
            PasswordHasher::default(),
            Keyring::parse([Keyring::generate_entry("k1").as_str()])?,
            &[7; 32],
            IdpSettings::default(),
        );
        let now = chrono::Utc::now().timestamp();
        idp.tokens().ensure_keys(now).await?;
        let password = "tiger lily 77 on ice";
        idp.accounts()
            .create_account("Bench", "bench@example.com", password, &[], "bench", now)
            .await?;
        let tokens = idp
            .sessions()
            .sign_in(
                &SignIn {
                    email: "bench@example.com",
                    password,
                    client: "127.0.0.1",
                    client_id: "keel",
                    ..SignIn::default()
                },
                now,
            )
            .await?;
        let started = Instant::now();
        for _ in 0..n {
            let claims = idp
                .tokens()
                .verify_access(std::hint::black_box(&tokens.access_token), now)
                .await?;
            std::hint::black_box(claims);
        }
        Ok(n as f64 / started.elapsed().as_secs_f64())
    })
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
