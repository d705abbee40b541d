//! Property-based fuzzing (proptest) of what the OMA parses from outside: the VMA's progress
//! answers, the body of `POST /api/v1/replications` and its validation, the settings' URL
//! parsers and the flags. Nothing may panic; what validation accepts fits its columns; a URL's
//! password never shows in an error or a redacted URL. Each property runs `CASES` inputs
//! (`PROPTEST_CASES` overrides it): `cargo test -p oma --test fuzz -- --nocapture` prints them.

use clap::Parser;
use oma::config::{parse_database_url, parse_vma_url, redact_url, ServeArgs};
use oma::replications::{CreateMigrationRequest, FIELD_LIMITS};
use oma::vma_client::classify_response;
use proptest::prelude::*;
use serde_json::{json, Value};

const CASES: u32 = 10_000;

fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(CASES);
    eprintln!("[fuzz] {cases} inputs per property");
    ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() }
}

/// Text of every kind: empty, ASCII, multi-byte, control characters, NUL, up to 700 characters.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        "[a-z0-9._ -]{0,40}",
        any::<String>(),
        (any::<char>(), 0usize..700).prop_map(|(c, n)| std::iter::repeat_n(c, n).collect()),
        ("[a-zA-Z]{0,5}", 180usize..520).prop_map(|(s, n)| format!("{s}{}", "é".repeat(n))),
    ]
}

/// Any JSON value, nested a few levels.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| serde_json::Number::from_f64(f).map(Value::Number).unwrap_or(Value::Null)),
        text().prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_]{1,20}", inner, 0..8)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A create request whose fields are arbitrary text, sometimes of the wrong JSON type.
fn create_request() -> impl Strategy<Value = Value> {
    let field = prop_oneof![8 => text().prop_map(Value::from), 1 => any_json()];
    let disk = (field.clone(), field.clone(), field.clone(), field.clone(), field.clone(), any::<i64>()).prop_map(
        |(id, vmdk_path, label, datastore, provisioning_type, size)| {
            json!({"id": id, "vmdk_path": vmdk_path, "label": label, "datastore": datastore,
                   "provisioning_type": provisioning_type, "size_gb": size, "capacity_bytes": size})
        },
    );
    (
        (field.clone(), field.clone(), field.clone(), field.clone()),
        prop::collection::vec(disk, 0..4),
        (field.clone(), field.clone(), field),
        any::<i64>(),
    )
        .prop_map(|((id, name, path, dc), disks, (vcenter, datacenter, network), ossea)| {
            json!({"source_vm": {"id": id, "name": name, "path": path, "datacenter": dc, "disks": disks},
                   "vcenter_host": vcenter, "datacenter": datacenter, "target_network": network,
                   "ossea_config_id": ossea})
        })
}

fn limit(field: &str) -> usize {
    FIELD_LIMITS.iter().find(|(f, _)| *f == field).map(|(_, n)| *n).unwrap()
}

fn chars(v: &str) -> usize {
    v.chars().count()
}

proptest! {
    #![proptest_config(config())]

    /// Whatever the VMA answers, with whatever status, is classified without a panic.
    #[test]
    fn any_vma_answer_is_classified(status in 100u16..600, body in prop_oneof![
        prop::collection::vec(any::<u8>(), 0..300),
        any_json().prop_map(|v| v.to_string().into_bytes()),
        (any_json(), any_json()).prop_map(|(p, s)| json!({"job_id": "j", "status": s, "percent": p}).to_string().into_bytes()),
    ]) {
        let _ = classify_response(status, &body);
        let _ = classify_response(200, &body);
    }

    /// Any JSON body: it parses into a request or is refused, and validation never panics; what
    /// it accepts fits every column.
    #[test]
    fn any_create_body_is_validated_and_what_passes_fits(body in prop_oneof![create_request(), any_json()]) {
        let Ok(request) = serde_json::from_value::<CreateMigrationRequest>(body) else { return Ok(()) };
        if request.validate().is_ok() {
            let vm = &request.source_vm;
            prop_assert!(chars(&vm.id) <= limit("source_vm.id") && chars(&vm.name) <= limit("source_vm.name"));
            prop_assert!(chars(&vm.path) <= limit("source_vm.path"));
            prop_assert!(chars(&vm.datacenter) <= limit("source_vm.datacenter"));
            for (v, field) in [(&request.vcenter_host, "vcenter_host"), (&request.datacenter, "datacenter"),
                               (&request.target_network, "target_network")] {
                prop_assert!(v.as_deref().map_or(0, chars) <= limit(field), "{}", field);
            }
            for d in &vm.disks {
                prop_assert!(chars(&d.id) <= limit("disks[].id"));
                prop_assert!(chars(&d.vmdk_path) <= limit("disks[].vmdk_path") && chars(&d.path) <= limit("disks[].vmdk_path"));
                prop_assert!(chars(&d.label) <= limit("disks[].label") && chars(&d.datastore) <= limit("disks[].datastore"));
                prop_assert!(chars(&d.provisioning_type) <= limit("disks[].provisioning_type"));
                prop_assert!(!d.id.contains('\0') && !d.vmdk_path.contains('\0'));
            }
            prop_assert!(!vm.name.contains('\0') && !vm.id.contains('\0'));
        }
    }

    /// The URL parsers never panic, and a password never shows in what they say.
    #[test]
    fn urls_never_panic_and_never_show_the_password(url in text(), password in "[a-zA-Z0-9]{12}") {
        let _ = parse_vma_url(&url);
        let _ = parse_database_url(Some(&url));
        let with_password = format!("mysql://user:{password}@{url}");
        if let Err(e) = parse_database_url(Some(&with_password)) {
            prop_assert!(!e.to_string().contains(&password), "{}", e);
        }
        let redacted = redact_url(&format!("mysql://user:{password}@host/db"));
        prop_assert!(!redacted.contains(&password), "{}", redacted);
    }

    /// Any value of any duration or count flag is accepted within its range or refused with the
    /// variable's name: never a panic, never an overflow later.
    #[test]
    fn any_setting_value_is_parsed_or_refused_by_name(
        flag in prop::sample::select(vec![
            ("--poll-interval", "OMA_POLL_INTERVAL"), ("--health-interval", "OMA_HEALTH_INTERVAL"),
            ("--vma-timeout", "OMA_VMA_TIMEOUT"), ("--stall-after", "OMA_STALL_AFTER"),
            ("--poll-concurrency", "OMA_POLL_CONCURRENCY"), ("--db-max-connections", "OMA_DB_MAX_CONNECTIONS"),
            ("--recovery-concurrency", "OMA_RECOVERY_CONCURRENCY"), ("--http-max-connections", "OMA_HTTP_MAX_CONNECTIONS"),
            ("--http-header-timeout", "OMA_HTTP_HEADER_TIMEOUT"), ("--api-db-timeout", "OMA_API_DB_TIMEOUT"),
        ]),
        value in prop_oneof![
            text(),
            (any::<u64>(), prop::sample::select(vec!["ns", "ms", "s", "m", "h", "d", "y", ""]))
                .prop_map(|(n, u)| format!("{n}{u}")),
            any::<i128>().prop_map(|n| n.to_string()),
        ],
    ) {
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            serve: ServeArgs,
        }
        let arg = format!("{}={value}", flag.0);
        let Ok(cli) = Cli::try_parse_from(["oma-api", "--database-url", "mysql://u:p@127.0.0.1/db", arg.as_str()]) else {
            return Ok(());
        };
        match cli.serve.into_settings() {
            Ok(s) => {
                // The lease arithmetic of any accepted values does not overflow.
                prop_assert!(s.lease_ttl() >= s.poll_interval);
                let _ = (s.lease_margin(), s.lease_use());
            }
            Err(e) => prop_assert!(e.to_string().contains(flag.1), "{}: {}", arg, e),
        }
    }
}
