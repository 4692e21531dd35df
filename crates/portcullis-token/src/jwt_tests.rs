//! Attacks on token verification, each named for what it tries.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use serde_json::{Map, Value, json};

use crate::jwt::{ACCESS_TOKEN_TYP, Expect, KeySet, TokenUse, VerifyError, sign, verify};
use crate::{Algorithm, SigningKey};

const ISS: &str = "https://id.example.com";
const NOW: i64 = 1_800_000_000;

fn claims() -> Map<String, Value> {
    let v = json!({
        "iss": ISS, "sub": "user-1", "client_id": "spa", "token_use": "access",
        "scope": "openid orders/read", "iat": NOW - 10, "exp": NOW + 300, "jti": "j1", "sid": "s1",
        "groups": ["user", "admin"],
    });
    v.as_object().cloned().unwrap_or_default()
}

fn setup() -> (SigningKey, KeySet) {
    let key = SigningKey::generate(Algorithm::ES256, "k1").expect("key");
    let set = KeySet::new([key.verifying_key().clone()]);
    (key, set)
}

fn expect(audiences: &[String]) -> Expect<'_> {
    Expect {
        issuer: ISS,
        audiences,
        token_use: Some(TokenUse::Access),
        leeway: 30,
        exp_leeway: 30,
        now: NOW,
    }
}

fn check(token: &str, set: &KeySet) -> Result<crate::jwt::Claims, VerifyError> {
    let aud = ["spa".to_owned()];
    verify(token, set, &expect(&aud))
}

/// A token with an arbitrary header and payload and the given raw signature bytes.
fn forge(header: Value, payload: &Map<String, Value>, sig: &[u8]) -> String {
    format!(
        "{}.{}.{}",
        B64.encode(header.to_string()),
        B64.encode(Value::Object(payload.clone()).to_string()),
        B64.encode(sig)
    )
}

#[test]
fn a_good_token_verifies_with_every_claim_read() {
    let (key, set) = setup();
    let token = sign(&key, ACCESS_TOKEN_TYP, &claims()).expect("sign");
    let c = check(&token, &set).expect("valid");
    assert_eq!(c.sub.as_deref(), Some("user-1"));
    assert_eq!(c.scopes, ["openid", "orders/read"]);
    assert_eq!(c.string_list("groups").expect("groups"), ["user", "admin"]);
    assert_eq!(c.sid.as_deref(), Some("s1"));
    for alg in [Algorithm::RS256, Algorithm::EdDSA] {
        let key = SigningKey::generate(alg, "k2").expect("key");
        let set = KeySet::new([key.verifying_key().clone()]);
        assert!(
            check(&sign(&key, "JWT", &claims()).expect("sign"), &set).is_ok(),
            "{alg}"
        );
    }
}

#[test]
fn rejects_alg_none_in_every_letter_case() {
    let (_, set) = setup();
    for alg in ["none", "None", "NONE", "nOnE"] {
        let token = forge(json!({"alg": alg, "kid": "k1"}), &claims(), b"");
        assert_eq!(
            check(&token, &set).err(),
            Some(VerifyError::AlgorithmMismatch),
            "{alg}"
        );
        let no_sig = format!("{}.", token.trim_end_matches('.'));
        assert!(check(&no_sig, &set).is_err(), "{alg}");
    }
}

#[test]
fn rejects_hs256_signed_with_our_public_key() {
    let (_, set) = setup();
    let public = set.get("k1").expect("key").jwk().to_string();
    let header = json!({"alg": "HS256", "kid": "k1"});
    let unsigned = format!(
        "{}.{}",
        B64.encode(header.to_string()),
        B64.encode(Value::Object(claims()).to_string())
    );
    let mac_key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, public.as_bytes());
    let tag = aws_lc_rs::hmac::sign(&mac_key, unsigned.as_bytes());
    let token = format!("{unsigned}.{}", B64.encode(tag.as_ref()));
    assert_eq!(
        check(&token, &set).err(),
        Some(VerifyError::AlgorithmMismatch)
    );
}

#[test]
fn rejects_an_es256_token_relabelled_rs256_and_the_reverse() {
    let rsa = SigningKey::generate(Algorithm::RS256, "r1").expect("key");
    let (ec, _) = setup();
    let set = KeySet::new([rsa.verifying_key().clone(), ec.verifying_key().clone()]);
    let token = sign(&ec, "JWT", &claims()).expect("sign");
    let (_, rest) = token.split_once('.').expect("parts");
    let relabelled = format!(
        "{}.{rest}",
        B64.encode(json!({"alg": "RS256", "kid": "k1"}).to_string())
    );
    assert_eq!(
        check(&relabelled, &set).err(),
        Some(VerifyError::AlgorithmMismatch)
    );
    let rekeyed = format!(
        "{}.{rest}",
        B64.encode(json!({"alg": "ES256", "kid": "r1"}).to_string())
    );
    assert_eq!(
        check(&rekeyed, &set).err(),
        Some(VerifyError::AlgorithmMismatch)
    );
}

#[test]
fn rejects_stripped_or_altered_signatures_and_payloads() {
    let (key, set) = setup();
    let token = sign(&key, ACCESS_TOKEN_TYP, &claims()).expect("sign");
    let (signing_input, _) = token.rsplit_once('.').expect("parts");
    assert!(check(&format!("{signing_input}."), &set).is_err());
    assert!(check(signing_input, &set).is_err());
    let mut admin = claims();
    admin.insert("groups".into(), json!(["admin"]));
    let (_, sig) = token.rsplit_once('.').expect("sig");
    let swapped = format!(
        "{}.{}.{sig}",
        token.split('.').next().expect("header"),
        B64.encode(Value::Object(admin).to_string())
    );
    assert_eq!(check(&swapped, &set).err(), Some(VerifyError::BadSignature));
    assert!(check(&format!("{token}.extra"), &set).is_err());
    assert!(
        check(&token.replace('.', ".="), &set).is_err(),
        "padding is not base64url"
    );
}

#[test]
fn rejects_ecdsa_signature_with_r_and_s_zero() {
    let (_, set) = setup();
    let token = forge(json!({"alg": "ES256", "kid": "k1"}), &claims(), &[0u8; 64]);
    assert_eq!(check(&token, &set).err(), Some(VerifyError::BadSignature));
}

#[test]
fn kid_with_path_traversal_or_sql_is_just_an_unknown_key() {
    let (key, set) = setup();
    for kid in ["../../../../dev/null", "' OR '1'='1", "k1\0", "K1", ""] {
        let token = forge(
            json!({"alg": "ES256", "kid": kid}),
            &claims(),
            &key.sign(b"x").expect("sign"),
        );
        assert_eq!(
            check(&token, &set).err(),
            Some(VerifyError::UnknownKey),
            "{kid:?}"
        );
    }
    let no_kid = forge(json!({"alg": "ES256"}), &claims(), &[1; 64]);
    assert_eq!(check(&no_kid, &set).err(), Some(VerifyError::UnknownKey));
}

#[test]
fn jku_x5u_and_embedded_jwk_headers_are_ignored() {
    let (_, set) = setup();
    let attacker = SigningKey::generate(Algorithm::ES256, "k1").expect("attacker key, same kid");
    let header = json!({
        "alg": "ES256", "kid": "k1", "jku": "https://evil.example/jwks.json",
        "x5u": "https://evil.example/cert.pem", "jwk": attacker.verifying_key().jwk(),
    });
    let unsigned = format!(
        "{}.{}",
        B64.encode(header.to_string()),
        B64.encode(Value::Object(claims()).to_string())
    );
    let token = format!(
        "{unsigned}.{}",
        B64.encode(attacker.sign(unsigned.as_bytes()).expect("sign"))
    );
    assert_eq!(
        check(&token, &set).err(),
        Some(VerifyError::BadSignature),
        "only our key counts"
    );
}

#[test]
fn rejects_crit_headers() {
    let (key, set) = setup();
    let header = json!({"alg": "ES256", "kid": "k1", "crit": ["exp-ext"], "exp-ext": 1});
    let unsigned = format!(
        "{}.{}",
        B64.encode(header.to_string()),
        B64.encode(Value::Object(claims()).to_string())
    );
    let token = format!(
        "{unsigned}.{}",
        B64.encode(key.sign(unsigned.as_bytes()).expect("sign"))
    );
    assert_eq!(check(&token, &set).err(), Some(VerifyError::CriticalHeader));
}

type Change = Box<dyn FnOnce(&mut Map<String, Value>)>;

fn signed_with(change: impl FnOnce(&mut Map<String, Value>)) -> (String, KeySet) {
    let (key, set) = setup();
    let mut c = claims();
    change(&mut c);
    (sign(&key, ACCESS_TOKEN_TYP, &c).expect("sign"), set)
}

#[test]
fn time_claims_are_enforced_with_leeway_and_strict_types() {
    let cases: Vec<(Change, Option<VerifyError>)> = vec![
        (
            Box::new(|c| {
                c.insert("exp".into(), json!(NOW - 31));
            }),
            Some(VerifyError::Expired),
        ),
        (
            Box::new(|c| {
                c.insert("exp".into(), json!(NOW - 29));
            }),
            None,
        ),
        (
            Box::new(|c| {
                c.insert("nbf".into(), json!(NOW + 60));
            }),
            Some(VerifyError::NotYetValid),
        ),
        (
            Box::new(|c| {
                c.insert("iat".into(), json!(NOW + 3600));
            }),
            Some(VerifyError::IssuedInFuture),
        ),
        (
            Box::new(|c| {
                c.insert("exp".into(), json!("9999999999"));
            }),
            Some(VerifyError::BadClaim("exp")),
        ),
        (
            Box::new(|c| {
                c.insert("exp".into(), json!(9_999_999_999.5));
            }),
            Some(VerifyError::BadClaim("exp")),
        ),
        (
            Box::new(|c| {
                c.remove("exp");
            }),
            Some(VerifyError::BadClaim("exp")),
        ),
        (
            Box::new(|c| {
                c.insert("nbf".into(), json!(null));
            }),
            Some(VerifyError::BadClaim("nbf")),
        ),
    ];
    for (n, (change, want)) in cases.into_iter().enumerate() {
        let (token, set) = signed_with(change);
        assert_eq!(check(&token, &set).err(), want, "case {n}");
    }
}

#[test]
fn wrong_issuer_audience_or_token_use_is_rejected() {
    let (token, set) = signed_with(|c| {
        c.insert("iss".into(), json!("https://id.example.com/"));
    });
    assert_eq!(check(&token, &set).err(), Some(VerifyError::WrongIssuer));
    let (token, set) = signed_with(|c| {
        c.insert("client_id".into(), json!("other"));
    });
    assert_eq!(check(&token, &set).err(), Some(VerifyError::WrongAudience));
    // Cognito ID tokens carry `aud`; access tokens `client_id` only. Both shapes are accepted.
    let (token, set) = signed_with(|c| {
        c.remove("client_id");
        c.insert("aud".into(), json!(["x", "spa"]));
    });
    assert!(check(&token, &set).is_ok());
    let (token, set) = signed_with(|c| {
        c.insert("token_use".into(), json!("id"));
    });
    assert_eq!(
        check(&token, &set).err(),
        Some(VerifyError::WrongTokenUse),
        "an ID token is not an access token"
    );
    let (token, set) = signed_with(|c| {
        c.remove("token_use");
    });
    assert_eq!(check(&token, &set).err(), Some(VerifyError::WrongTokenUse));
    let (token, set) = signed_with(|c| {
        c.insert("aud".into(), json!(7));
    });
    assert_eq!(
        check(&token, &set).err(),
        Some(VerifyError::BadClaim("aud"))
    );
}

#[test]
fn oversized_and_garbage_tokens_are_rejected_cheaply() {
    let (_, set) = setup();
    assert_eq!(
        check(&"a".repeat(20_000), &set).err(),
        Some(VerifyError::TooLarge)
    );
    for junk in [
        "",
        ".",
        "..",
        "a.b.c",
        "e30.e30.",
        "W10.e30.AA",
        "eyJhbGciOiJFUzI1NiJ9",
        "💥.💥.💥",
    ] {
        assert!(check(junk, &set).is_err(), "{junk:?}");
    }
}

#[test]
fn exp_is_strict_without_exp_leeway_while_nbf_and_iat_keep_the_skew() {
    let (token, set) = signed_with(|c| {
        c.insert("exp".into(), json!(NOW));
        c.insert("iat".into(), json!(NOW + 3));
        c.insert("nbf".into(), json!(NOW + 3));
    });
    let aud = ["spa".to_owned()];
    let strict = Expect {
        exp_leeway: 0,
        leeway: 5,
        ..expect(&aud)
    };
    assert_eq!(
        verify(&token, &set, &strict).err(),
        Some(VerifyError::Expired),
        "refused from the second of exp on"
    );
    let before = Expect {
        now: NOW - 1,
        ..strict.clone()
    };
    assert!(
        verify(&token, &set, &before).is_ok(),
        "nbf/iat 4 s ahead are within the skew"
    );
}

/// Signs `header.payload` exactly as written (so a member can appear twice).
fn signed_raw(key: &SigningKey, header: &str, payload: &str) -> String {
    let input = format!("{}.{}", B64.encode(header), B64.encode(payload));
    let sig = key.sign(input.as_bytes()).expect("sign");
    format!("{input}.{}", B64.encode(sig))
}

#[test]
fn a_member_named_twice_in_the_header_or_the_claims_is_refused() {
    let (key, set) = setup();
    let header = r#"{"alg":"ES256","kid":"k1","typ":"at+jwt"}"#;
    let good = Value::Object(claims()).to_string();
    assert!(
        check(&signed_raw(&key, header, &good), &set).is_ok(),
        "control"
    );
    let body = good.trim_start_matches('{');
    for payload in [
        format!(r#"{{"sub":"admin",{body}"#),
        format!(r#"{{"groups":["admin"],{body}"#),
        format!(r#"{{"iss":"https://evil.example",{body}"#),
    ] {
        assert_eq!(
            check(&signed_raw(&key, header, &payload), &set).err(),
            Some(VerifyError::Malformed("claim repeated")),
            "{payload}"
        );
    }
    let twice_alg = r#"{"alg":"none","kid":"k1","alg":"ES256","typ":"at+jwt"}"#;
    assert_eq!(
        check(&signed_raw(&key, twice_alg, &good), &set).err(),
        Some(VerifyError::Malformed("header member repeated"))
    );
}
