//! The rate table: the default file loads and prices as documented, and
//! every load error names the file, the line and the field.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use tally_events::records::{PlanTier, Unit};
use tally_ledger::rates::{Problem, RateTable, RatesError};

const DEFAULT_TABLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../pipelines/rates.toml");

fn at(text: &str) -> DateTime<Utc> {
    text.parse().expect("instant literal")
}

fn d(text: &str) -> Decimal {
    text.parse().expect("decimal literal")
}

/// A valid one-version table; tests edit it to break one thing.
const VALID: &str = r#"format_version = 1

[[versions]]
id = "2026-01"
effective_from = 2026-01-01T00:00:00Z
tiers = { PAYG = "0.12", BASIC = "0.10", PRO = "0.08" }

[[versions.services]]
service = "ai_modify"
engine = "nano_banana_2"
display = "AI Modify · Nano Banana 2"
unit = "image"
credits_per_unit = "4"

[[versions.services]]
service = "sms"
engine = "standard"
display = "SMS"
unit = "message"
credits_per_unit = "0.05"
"#;

const SECOND_VERSION: &str = r#"
[[versions]]
id = "2026-07"
effective_from = 2026-07-01T00:00:00Z
tiers = { PAYG = "0.12", BASIC = "0.10", PRO = "0.08" }

[[versions.services]]
service = "sms"
engine = "standard"
display = "SMS"
unit = "message"
credits_per_unit = "0.05"
"#;

/// Parses `text` as `bad.toml`, expects an error, and checks its message
/// names the file, `line` and `field` (and contains `words`).
fn expect_error(text: &str, line: usize, field: &str, words: &str) -> RatesError {
    let error = RateTable::parse(text, "bad.toml").expect_err("the table must be refused");
    let message = error.to_string();
    assert!(message.contains(&format!("bad.toml:{line}:")), "no file:line bad.toml:{line} in {message:?}");
    assert!(message.contains(&format!("field `{field}`")), "no field `{field}` in {message:?}");
    assert!(message.contains(words), "no {words:?} in {message:?}");
    match &error {
        RatesError::Invalid { file, line: found, field: found_field, .. } => {
            assert_eq!((file.as_str(), *found, found_field.as_str()), ("bad.toml", line, field));
        }
        other => panic!("expected an Invalid error, got {other:?}"),
    }
    error
}

fn problem(error: RatesError) -> Problem {
    match error {
        RatesError::Invalid { problem, .. } => *problem,
        other => panic!("expected an Invalid error, got {other:?}"),
    }
}

#[test]
fn default_table_loads_with_two_versions() {
    let table = RateTable::load(DEFAULT_TABLE).expect("pipelines/rates.toml loads");
    let ids: Vec<&str> = table.versions().iter().map(|v| v.id()).collect();
    assert_eq!(ids, ["2026-01", "2026-07"]);
    for version in table.versions() {
        assert_eq!(version.services().len(), 11);
        assert_eq!(version.dollars_per_credit(PlanTier::Payg).decimal(), d("0.12"));
        assert_eq!(version.dollars_per_credit(PlanTier::Basic).decimal(), d("0.10"));
        assert_eq!(version.dollars_per_credit(PlanTier::Pro).decimal(), d("0.08"));
    }
    let january = table.version("2026-01").expect("2026-01");
    let july = table.version("2026-07").expect("2026-07");
    assert_eq!(january.effective_from(), at("2026-01-01T00:00:00Z"));
    assert_eq!(july.effective_from(), at("2026-07-01T00:00:00Z"));
    // The 2026-07 change: GPT-Image 2 6 → 7, Sora 5 → 4.5, all else equal.
    let cpu =
        |v: &tally_ledger::RateVersion, s: &str, e: &str| v.service(s, e).expect("priced").credits_per_unit().decimal();
    assert_eq!((cpu(january, "ai_modify", "gpt_image_2"), cpu(july, "ai_modify", "gpt_image_2")), (d("6"), d("7")));
    assert_eq!((cpu(january, "ai_image_to_video", "sora"), cpu(july, "ai_image_to_video", "sora")), (d("5"), d("4.5")));
    for rate in january.services() {
        if rate.engine() != "gpt_image_2" && rate.engine() != "sora" {
            let other = july.service(rate.service(), rate.engine()).expect("same services");
            assert_eq!(other, rate);
        }
    }
    let seedance = january.service("ai_image_to_video", "seedance").expect("seedance");
    assert_eq!((seedance.unit(), seedance.credits_per_unit().decimal()), (Unit::VideoSecond, d("1.5")));
    assert_eq!(january.service("sms", "standard").map(|r| r.unit()), Some(Unit::Message));
    assert_eq!(january.service("ai_modify", "nano_banana_2").map(|r| r.display()), Some("AI Modify · Nano Banana 2"));
    assert!(january.service("ai_modify", "dall_e").is_none());
}

#[test]
fn version_at_picks_the_latest_in_force() {
    let table = RateTable::load(DEFAULT_TABLE).expect("loads");
    assert!(table.version_at(at("2025-12-31T23:59:59.999Z")).is_none());
    assert_eq!(table.version_at(at("2026-01-01T00:00:00Z")).map(|v| v.id()), Some("2026-01"));
    assert_eq!(table.version_at(at("2026-06-30T23:59:59.999Z")).map(|v| v.id()), Some("2026-01"));
    assert_eq!(table.version_at(at("2026-07-01T00:00:00Z")).map(|v| v.id()), Some("2026-07"));
    assert_eq!(table.version_at(at("2030-01-01T00:00:00Z")).map(|v| v.id()), Some("2026-07"));
}

#[test]
fn decimals_may_be_bare_numbers_read_exactly() {
    // 0.1 is not exact as a float; the source text is read instead.
    let text = VALID
        .replace(
            r#"tiers = { PAYG = "0.12", BASIC = "0.10", PRO = "0.08" }"#,
            "tiers = { PAYG = 0.3, BASIC = 0.1, PRO = 0.1 }",
        )
        .replace(r#"credits_per_unit = "4""#, "credits_per_unit = 4")
        .replace(r#"credits_per_unit = "0.05""#, "credits_per_unit = 0.05");
    let table = RateTable::parse(&text, "bare.toml").expect("bare numbers load");
    let version = &table.versions()[0];
    assert_eq!(version.dollars_per_credit(PlanTier::Payg).to_string(), "0.3");
    assert_eq!(version.dollars_per_credit(PlanTier::Basic).to_string(), "0.1");
    assert_eq!(version.service("sms", "standard").map(|r| r.credits_per_unit().to_string()), Some("0.05".into()));
    assert_eq!(version.service("ai_modify", "nano_banana_2").map(|r| r.credits_per_unit().decimal()), Some(d("4")));
    // A string effective_from works too.
    let text =
        VALID.replace("effective_from = 2026-01-01T00:00:00Z", r#"effective_from = "2026-01-01T01:00:00+01:00""#);
    let table = RateTable::parse(&text, "string.toml").expect("string instant loads");
    assert_eq!(table.versions()[0].effective_from(), at("2026-01-01T00:00:00Z"));
}

#[test]
fn unparseable_toml_names_file_line_and_key() {
    let text = VALID.replace(r#"unit = "message""#, "unit = message");
    expect_error(&text, 19, "unit", "invalid");
}

#[test]
fn unknown_field_is_refused() {
    let text = VALID.replace(r#"unit = "message""#, "unit = \"message\"\ncolour = \"blue\"");
    let error = expect_error(&text, 20, "colour", "unknown field");
    assert!(matches!(problem(error), Problem::Toml(_)));
    let text = VALID.replace("format_version = 1", "format_version = 1\nowner = \"finance\"");
    expect_error(&text, 2, "owner", "unknown field");
}

#[test]
fn unknown_tier_is_refused() {
    let text = VALID.replace(r#"PRO = "0.08" }"#, r#"PRO = "0.08", GOLD = "0.05" }"#);
    let error = expect_error(&text, 6, "versions[0].tiers.GOLD", "unknown tier \"GOLD\"");
    assert_eq!(problem(error), Problem::UnknownTier("GOLD".into()));
}

#[test]
fn missing_tier_is_refused() {
    let text = VALID.replace(r#", BASIC = "0.10""#, "");
    let error = expect_error(&text, 6, "versions[0].tiers.BASIC", "tier BASIC is missing");
    assert_eq!(problem(error), Problem::MissingTier("BASIC"));
}

#[test]
fn tier_prices_must_fall_from_payg_to_pro() {
    let text = VALID.replace(r#"PRO = "0.08""#, r#"PRO = "0.11""#);
    let error = expect_error(&text, 6, "versions[0].tiers.PRO", "PAYG must be the highest");
    assert!(matches!(problem(error), Problem::TierOrder { higher: "PRO", lower: "BASIC", .. }));
    let text = VALID.replace(r#"BASIC = "0.10""#, r#"BASIC = "0.13""#);
    expect_error(&text, 6, "versions[0].tiers.BASIC", "BASIC (0.13) is above PAYG (0.12)");
}

#[test]
fn zero_and_negative_prices_are_refused() {
    let text = VALID.replace(r#"credits_per_unit = "0.05""#, r#"credits_per_unit = "0""#);
    let error = expect_error(&text, 20, "versions[0].services[1].credits_per_unit", "must be greater than zero");
    assert_eq!(problem(error), Problem::NotPositive(d("0")));
    let text = VALID.replace(r#"credits_per_unit = "4""#, "credits_per_unit = -4");
    expect_error(&text, 13, "versions[0].services[0].credits_per_unit", "-4 must be greater than zero");
    let text = VALID.replace(r#"PAYG = "0.12""#, r#"PAYG = "-0.12""#);
    expect_error(&text, 6, "versions[0].tiers.PAYG", "must be greater than zero");
}

#[test]
fn too_many_fractional_digits_are_refused() {
    let text = VALID.replace(r#"credits_per_unit = "0.05""#, r#"credits_per_unit = "0.0525""#);
    let error = expect_error(&text, 20, "versions[0].services[1].credits_per_unit", "more than 3 fractional digits");
    assert_eq!(problem(error), Problem::TooManyFractionalDigits { value: d("0.0525"), max: 3 });
    // Trailing zeros do not count: 0.050000 is 0.05.
    let text = VALID.replace(r#"credits_per_unit = "0.05""#, r#"credits_per_unit = "0.050000""#);
    assert!(RateTable::parse(&text, "ok.toml").is_ok());
    let text = VALID.replace(r#"PRO = "0.08""#, r#"PRO = "0.08125""#);
    expect_error(&text, 6, "versions[0].tiers.PRO", "more than 4 fractional digits");
}

#[test]
fn non_decimal_values_are_refused() {
    let text = VALID.replace(r#"credits_per_unit = "4""#, r#"credits_per_unit = "four""#);
    expect_error(&text, 13, "versions[0].services[0].credits_per_unit", "\"four\" is not a decimal number");
    let text = VALID.replace(r#"credits_per_unit = "4""#, "credits_per_unit = 4e0");
    expect_error(&text, 13, "versions[0].services[0].credits_per_unit", "4e0 is not a decimal number");
}

#[test]
fn duplicate_service_is_refused() {
    let text = VALID
        .replace("service = \"sms\"\nengine = \"standard\"", "service = \"ai_modify\"\nengine = \"nano_banana_2\"");
    let error = expect_error(&text, 16, "versions[0].services[1].service", "ai_modify/nano_banana_2 is already priced");
    assert_eq!(
        problem(error),
        Problem::DuplicateService { service: "ai_modify".into(), engine: "nano_banana_2".into(), first_line: 9 }
    );
}

#[test]
fn duplicate_version_id_is_refused() {
    let text = format!("{VALID}{}", SECOND_VERSION.replace(r#"id = "2026-07""#, r#"id = "2026-01""#));
    let error = expect_error(&text, 23, "versions[1].id", "version id \"2026-01\" is already used at line 4");
    assert!(matches!(problem(error), Problem::DuplicateVersion { first_line: 4, .. }));
}

#[test]
fn versions_must_be_in_strictly_increasing_order() {
    // Unordered: the second version starts before the first.
    let text = format!("{VALID}{}", SECOND_VERSION.replace("2026-07-01T00:00:00Z", "2025-07-01T00:00:00Z"));
    let error = expect_error(&text, 24, "versions[1].effective_from", "not after 2026-01-01T00:00:00Z");
    assert!(matches!(problem(error), Problem::VersionOrder { .. }));
    // Overlapping: two versions from the same instant.
    let text = format!("{VALID}{}", SECOND_VERSION.replace("2026-07-01T00:00:00Z", "2026-01-01T00:00:00Z"));
    expect_error(&text, 24, "versions[1].effective_from", "strictly increasing");
    // In order: fine.
    let table = RateTable::parse(&format!("{VALID}{SECOND_VERSION}"), "ok.toml").expect("ordered versions load");
    assert_eq!(table.versions().len(), 2);
}

#[test]
fn unknown_unit_is_refused() {
    let text = VALID.replace(r#"unit = "message""#, r#"unit = "minute""#);
    let error = expect_error(&text, 19, "versions[0].services[1].unit", "unknown unit \"minute\"");
    assert_eq!(problem(error), Problem::UnknownUnit("minute".into()));
}

#[test]
fn empty_table_is_refused() {
    let error = expect_error("format_version = 1\n", 2, "versions", "no [[versions]]");
    assert_eq!(problem(error), Problem::NoVersions);
    let error = RateTable::parse("", "bad.toml").expect_err("empty file");
    assert!(error.to_string().contains("bad.toml:1: field `format_version`: missing field"), "{error}");
    // A version without services.
    let text = VALID.split("[[versions.services]]").next().expect("head").to_string();
    expect_error(&text, 4, "versions[0].services", "has no [[versions.services]]");
}

#[test]
fn bad_instants_are_refused() {
    // A local datetime has no offset: not an instant.
    let text = VALID.replace("2026-01-01T00:00:00Z", "2026-01-01T00:00:00");
    expect_error(&text, 5, "versions[0].effective_from", "not an RFC 3339 instant");
    let text = VALID.replace("effective_from = 2026-01-01T00:00:00Z", r#"effective_from = "January""#);
    expect_error(&text, 5, "versions[0].effective_from", "\"January\" is not an RFC 3339 instant");
}

#[test]
fn unsupported_format_and_empty_codes_are_refused() {
    let text = VALID.replace("format_version = 1", "format_version = 2");
    expect_error(&text, 1, "format_version", "format_version 2 is not supported");
    let text = VALID.replace(r#"engine = "standard""#, r#"engine = " ""#);
    expect_error(&text, 17, "versions[0].services[1].engine", "must not be empty");
}

#[test]
fn load_names_the_missing_file() {
    let error = RateTable::load("/nonexistent/rates.toml").expect_err("no such file");
    assert!(error.to_string().contains("/nonexistent/rates.toml"), "{error}");
    assert!(!error.is_retryable());
}
