//! `user import`: users from a Cognito user pool, as `aws cognito-idp list-users` prints them
//! (one page, or a JSON array of pages), with their groups from `admin-list-groups-for-user`.

use std::collections::BTreeMap;

use portcullis_idp::ImportUser;
use serde_json::Value;

/// One entry of the export: the user to import, or why it cannot be.
#[derive(Debug)]
pub enum Entry {
    User(Box<ImportUser>),
    Invalid { username: String, reason: String },
}

/// Reads a `list-users` export. `groups` maps usernames to their groups: a JSON object whose
/// values are `admin-list-groups-for-user` answers (`{"Groups": [{"GroupName": …}]}`) or
/// arrays of names. A user entry may also carry its own `Groups` in either form.
pub fn parse(export: &str, groups: Option<&str>) -> Result<Vec<Entry>, String> {
    let export: Value =
        serde_json::from_str(export).map_err(|e| format!("the export is not JSON: {e}"))?;
    let pages: Vec<&Value> = match &export {
        Value::Array(pages) => pages.iter().collect(),
        Value::Object(_) => vec![&export],
        _ => return Err("the export must be the JSON of `aws cognito-idp list-users` (an object with \"Users\"), or an array of such pages".into()),
    };
    let mut group_map: BTreeMap<String, Vec<String>> = BTreeMap::new();
    if let Some(text) = groups {
        let v: Value =
            serde_json::from_str(text).map_err(|e| format!("the groups file is not JSON: {e}"))?;
        let Value::Object(map) = v else {
            return Err("the groups file must be a JSON object: {\"username\": <admin-list-groups-for-user output>, …}".into());
        };
        for (user, answer) in map {
            let names = group_names(&answer)
                .ok_or_else(|| format!("groups of {user:?}: expected {{\"Groups\": [{{\"GroupName\": …}}]}} or an array of names"))?;
            group_map.insert(user, names);
        }
    }
    let mut out = Vec::new();
    for page in pages {
        let users = page
            .get("Users")
            .and_then(Value::as_array)
            .ok_or("a page of the export has no \"Users\" array")?;
        for u in users {
            out.push(entry(u, &group_map));
        }
    }
    Ok(out)
}

fn group_names(v: &Value) -> Option<Vec<String>> {
    let list = match v {
        Value::Array(a) => a,
        Value::Object(o) => o.get("Groups")?.as_array()?,
        _ => return None,
    };
    list.iter()
        .map(|g| match g {
            Value::String(s) => Some(s.clone()),
            Value::Object(o) => o.get("GroupName")?.as_str().map(str::to_owned),
            _ => None,
        })
        .collect()
}

fn entry(u: &Value, groups: &BTreeMap<String, Vec<String>>) -> Entry {
    let username = u
        .get("Username")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let invalid = |reason: &str| Entry::Invalid {
        username: username.clone(),
        reason: reason.to_owned(),
    };
    if username.is_empty() {
        return invalid("no Username");
    }
    // `Attributes` in list-users, `UserAttributes` in admin-get-user.
    let Some(attributes) = u
        .get("Attributes")
        .or_else(|| u.get("UserAttributes"))
        .and_then(Value::as_array)
    else {
        return invalid("no Attributes");
    };
    let mut attrs = BTreeMap::new();
    for a in attributes {
        let (Some(name), Some(value)) = (
            a.get("Name").and_then(Value::as_str),
            a.get("Value").and_then(Value::as_str),
        ) else {
            return invalid("an attribute without Name or Value");
        };
        attrs.insert(name.to_owned(), value.to_owned());
    }
    let Some(sub) = attrs.remove("sub") else {
        return invalid("no sub attribute");
    };
    if u.get("UserStatus").and_then(Value::as_str) == Some("EXTERNAL_PROVIDER") {
        return invalid("signs in through an external identity provider, not with a password");
    }
    let email = attrs.remove("email");
    let email_verified = attrs.remove("email_verified").as_deref() == Some("true");
    let enabled = u.get("Enabled").and_then(Value::as_bool).unwrap_or(true);
    let own = u.get("Groups").and_then(group_names).unwrap_or_default();
    let mut user_groups = groups.get(&username).cloned().unwrap_or_default();
    for g in own {
        if !user_groups.contains(&g) {
            user_groups.push(g);
        }
    }
    Entry::User(Box::new(ImportUser {
        id: sub,
        username,
        email,
        email_verified,
        attributes: attrs,
        groups: user_groups,
        enabled,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXPORT: &str = r#"{"Users": [
      {"Username": "alice", "Enabled": true, "UserStatus": "CONFIRMED",
       "Attributes": [{"Name": "sub", "Value": "5b2c-1"}, {"Name": "email", "Value": "alice@example.com"},
                      {"Name": "email_verified", "Value": "true"}, {"Name": "custom:tenant", "Value": "acme"}],
       "Groups": [{"GroupName": "admin"}]},
      {"Username": "bob", "Enabled": false, "UserStatus": "FORCE_CHANGE_PASSWORD",
       "Attributes": [{"Name": "sub", "Value": "5b2c-2"}]},
      {"Username": "fed_123", "UserStatus": "EXTERNAL_PROVIDER", "Attributes": [{"Name": "sub", "Value": "x"}]},
      {"Username": "nosub", "Attributes": []}
    ]}"#;

    #[test]
    fn cognito_exports_are_read_with_their_groups() {
        let groups = r#"{"alice": {"Groups": [{"GroupName": "user"}]}, "bob": ["user"]}"#;
        let entries = parse(EXPORT, Some(groups)).expect("parse");
        let Entry::User(alice) = &entries[0] else {
            panic!("alice")
        };
        assert_eq!(alice.id, "5b2c-1");
        assert_eq!(alice.email.as_deref(), Some("alice@example.com"));
        assert!(alice.email_verified && alice.enabled);
        assert_eq!(alice.groups, ["user", "admin"]);
        assert_eq!(alice.attributes["custom:tenant"], "acme");
        assert!(!alice.attributes.contains_key("sub"));
        let Entry::User(bob) = &entries[1] else {
            panic!("bob")
        };
        assert!(!bob.enabled && bob.email.is_none());
        assert!(
            matches!(&entries[2], Entry::Invalid { reason, .. } if reason.contains("external"))
        );
        assert!(matches!(&entries[3], Entry::Invalid { reason, .. } if reason.contains("sub")));
        // Pages in an array read the same.
        let pages = format!("[{EXPORT}, {EXPORT}]");
        assert_eq!(parse(&pages, None).expect("parse").len(), 8);
        assert!(parse("[1]", None).is_err());
        assert!(parse("{}", None).is_err());
    }
}
