//! The subset of pinejs-client's OData query compiler that `@balena/release-update` uses,
//! producing byte-identical request lines.
//!
//! [`Query::compile`] gives the string pinejs-client builds (raw spaces and quotes), and
//! [`Query::to_wire`] the form that goes on the wire after WHATWG URL serialisation, which
//! percent-encodes only space, `"`, `'`, `<` and `>` in a query. No form-urlencoding is
//! involved: `$`, `(`, `)`, `,`, `;` and `=` stay literal.
//!
//! ```
//! use bru_balena::pine::{Filter, Query, QueryOption, Value};
//! let q = Query::new("image")
//!     .id(1115290)
//!     .option(QueryOption::Select(vec!["id", "image_size"]))
//!     .option(QueryOption::Filter(Filter::eq("status", Value::str("success"))));
//! assert_eq!(q.to_wire(), "image(1115290)?$select=id,image_size&$filter=status%20eq%20%27success%27");
//! ```

use chrono::{DateTime, Utc};
use percent_encoding::{utf8_percent_encode, AsciiSet, CONTROLS, NON_ALPHANUMERIC};

/// A literal in a filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// A number, written in decimal.
    Number(u64),
    /// A string, quoted and escaped.
    String(String),
    /// A timestamp, written `datetime'<ISO 8601 with milliseconds>Z'`.
    DateTime(DateTime<Utc>),
}

impl Value {
    /// A string literal.
    pub fn str(s: &str) -> Value {
        Value::String(s.to_owned())
    }

    fn compile(&self) -> String {
        match self {
            Value::Number(n) => n.to_string(),
            Value::String(s) => format!("'{}'", encode_uri_component(&s.replace('\'', "''"))),
            Value::DateTime(t) => format!("datetime'{}'", t.format("%Y-%m-%dT%H:%M:%S%.3fZ")),
        }
    }
}

/// A `$filter` expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Filter {
    /// `field eq value`
    Eq(&'static str, Value),
    /// `field gt value`
    Gt(&'static str, Value),
    /// `startswith(field,value)`
    StartsWith(&'static str, Value),
    /// Operands joined with ` and `; compound operands are parenthesised.
    And(Vec<Filter>),
    /// Operands joined with ` or `; compound operands are parenthesised.
    Or(Vec<Filter>),
}

impl Filter {
    /// `field eq value`
    pub fn eq(field: &'static str, value: Value) -> Filter {
        Filter::Eq(field, value)
    }

    /// The compiled filter text.
    pub fn compile(&self) -> String {
        let join = |operands: &[Filter], op: &str| {
            operands
                .iter()
                .map(|f| {
                    if f.is_compound() {
                        format!("({})", f.compile())
                    } else {
                        f.compile()
                    }
                })
                .collect::<Vec<_>>()
                .join(op)
        };
        match self {
            Filter::Eq(field, v) => format!("{field} eq {}", v.compile()),
            Filter::Gt(field, v) => format!("{field} gt {}", v.compile()),
            Filter::StartsWith(field, v) => format!("startswith({field},{})", v.compile()),
            Filter::And(operands) => join(operands, " and "),
            Filter::Or(operands) => join(operands, " or "),
        }
    }

    fn is_compound(&self) -> bool {
        matches!(self, Filter::And(o) | Filter::Or(o) if o.len() > 1)
    }
}

/// One navigation in an `$expand`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expand {
    /// The navigation property.
    pub name: &'static str,
    /// Nested options, joined with `;`.
    pub options: Vec<QueryOption>,
}

impl Expand {
    /// An expand with nested options.
    pub fn new(name: &'static str, options: Vec<QueryOption>) -> Expand {
        Expand { name, options }
    }

    fn compile(&self) -> String {
        if self.options.is_empty() {
            self.name.to_owned()
        } else {
            let inner: Vec<String> = self.options.iter().map(QueryOption::compile).collect();
            format!("{}({})", self.name, inner.join(";"))
        }
    }
}

/// A query option; options are written in the order they are added.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueryOption {
    /// `$select=a,b`
    Select(Vec<&'static str>),
    /// `$top=n`
    Top(u32),
    /// `$orderby=field desc`
    OrderByDesc(&'static str),
    /// `$expand=a(..),b(..)`
    Expand(Vec<Expand>),
    /// `$filter=…`
    Filter(Filter),
}

impl QueryOption {
    fn compile(&self) -> String {
        match self {
            QueryOption::Select(fields) => format!("$select={}", fields.join(",")),
            QueryOption::Top(n) => format!("$top={n}"),
            QueryOption::OrderByDesc(field) => format!("$orderby={field} desc"),
            QueryOption::Expand(expands) => {
                let parts: Vec<String> = expands.iter().map(Expand::compile).collect();
                format!("$expand={}", parts.join(","))
            }
            QueryOption::Filter(f) => format!("$filter={}", f.compile()),
        }
    }
}

/// A GET on a resource, optionally by id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    resource: &'static str,
    id: Option<u64>,
    options: Vec<QueryOption>,
}

impl Query {
    /// A query on `resource`.
    pub fn new(resource: &'static str) -> Query {
        Query {
            resource,
            id: None,
            options: Vec::new(),
        }
    }

    /// Addresses one entity: `resource(id)`.
    pub fn id(mut self, id: u64) -> Query {
        self.id = Some(id);
        self
    }

    /// Appends an option.
    pub fn option(mut self, option: QueryOption) -> Query {
        self.options.push(option);
        self
    }

    /// Whether the query addresses one entity by id.
    pub fn is_by_id(&self) -> bool {
        self.id.is_some()
    }

    /// The URL tail (after the API prefix) as pinejs-client compiles it.
    pub fn compile(&self) -> String {
        let mut out = encode_uri_component(self.resource);
        if let Some(id) = self.id {
            out.push_str(&format!("({id})"));
        }
        if !self.options.is_empty() {
            let opts: Vec<String> = self.options.iter().map(QueryOption::compile).collect();
            out.push('?');
            out.push_str(&opts.join("&"));
        }
        out
    }

    /// The URL tail as sent on the wire.
    pub fn to_wire(&self) -> String {
        wire_encode(&self.compile())
    }
}

/// What JavaScript's `encodeURIComponent` escapes: everything but ASCII alphanumerics and
/// `-_.!~*'()`.
const URI_COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'!')
    .remove(b'~')
    .remove(b'*')
    .remove(b'\'')
    .remove(b'(')
    .remove(b')');

/// What WHATWG URL serialisation escapes in the query of a special-scheme URL (space, `"`,
/// `'`, `<`, `>`, and controls), applied to an already compiled query string.
const SPECIAL_QUERY: &AsciiSet = &CONTROLS.add(b' ').add(b'"').add(b'\'').add(b'<').add(b'>');

/// JavaScript `encodeURIComponent`.
pub fn encode_uri_component(s: &str) -> String {
    utf8_percent_encode(s, URI_COMPONENT).to_string()
}

/// The query as a browser (and the npm tool's HTTP client) puts it on the wire.
fn wire_encode(s: &str) -> String {
    utf8_percent_encode(s, SPECIAL_QUERY).to_string()
}

/// The release expand of balena-sdk's `release.getWithImageDetails`; without the
/// `is_created_by__user` navigation, which openBalena's release does not have (its API
/// answers 500 to a query that expands it), when `with_user` is false.
fn release_expand(with_user: bool) -> QueryOption {
    let mut expands = vec![Expand::new(
        "release_image",
        vec![QueryOption::Expand(vec![Expand::new(
            "image",
            vec![
                QueryOption::Select(vec!["id"]),
                QueryOption::Expand(vec![Expand::new(
                    "is_a_build_of__service",
                    vec![QueryOption::Select(vec!["service_name"])],
                )]),
            ],
        )])],
    )];
    if with_user {
        expands.push(Expand::new(
            "is_created_by__user",
            vec![QueryOption::Select(vec!["id", "username"])],
        ));
    }
    QueryOption::Expand(expands)
}

fn success() -> Filter {
    Filter::eq("status", Value::str("success"))
}

/// `release(<id>)` with the image details, successful releases only.
pub fn release_by_id(id: u64) -> Query {
    release_by_id_with(id, true)
}

/// [`release_by_id`] as openBalena takes it: without the creating user.
pub fn openbalena_release_by_id(id: u64) -> Query {
    release_by_id_with(id, false)
}

fn release_by_id_with(id: u64, with_user: bool) -> Query {
    Query::new("release")
        .id(id)
        .option(release_expand(with_user))
        .option(QueryOption::Filter(success()))
}

/// Successful releases whose commit starts with `prefix`, with the image details.
pub fn releases_by_commit(prefix: &str) -> Query {
    releases_by_commit_with(prefix, true)
}

/// [`releases_by_commit`] as openBalena takes it: without the creating user.
pub fn openbalena_releases_by_commit(prefix: &str) -> Query {
    releases_by_commit_with(prefix, false)
}

fn releases_by_commit_with(prefix: &str, with_user: bool) -> Query {
    Query::new("release")
        .option(QueryOption::Filter(Filter::And(vec![
            Filter::StartsWith("commit", Value::str(prefix)),
            success(),
        ])))
        .option(release_expand(with_user))
}

/// `delta?$select=id&$top=1`: does the API have a `delta` resource? balenaCloud answers
/// 200; openBalena (pinejs, no such resource) 401 with an empty body, or 404 before
/// pinejs 15.4.4.
pub fn delta_probe() -> Query {
    Query::new("delta")
        .option(QueryOption::Select(vec!["id"]))
        .option(QueryOption::Top(1))
}

/// `image(<id>)`, successful images only.
pub fn image(id: u64) -> Query {
    Query::new("image")
        .id(id)
        .option(QueryOption::Select(vec![
            "id",
            "is_stored_at__image_location",
            "content_hash",
            "image_size",
        ]))
        .option(QueryOption::Filter(success()))
}

/// The newest version-3 delta from `src` to `dest` that succeeded, or is running and was
/// updated after `running_since`.
pub fn latest_delta(src: u64, dest: u64, running_since: DateTime<Utc>) -> Query {
    Query::new("delta")
        .option(QueryOption::Top(1))
        .option(QueryOption::Select(vec![
            "id",
            "status",
            "version",
            "is_stored_at__location",
            "size",
        ]))
        .option(QueryOption::Filter(Filter::And(vec![
            Filter::eq("version", Value::Number(3)),
            Filter::eq("originates_from__image", Value::Number(src)),
            Filter::eq("produces__image", Value::Number(dest)),
            Filter::Or(vec![
                success(),
                Filter::And(vec![
                    Filter::eq("status", Value::str("running")),
                    Filter::Gt("update_timestamp", Value::DateTime(running_since)),
                ]),
            ]),
        ])))
        .option(QueryOption::OrderByDesc("id"))
}

#[cfg(test)]
mod tests {
    use super::*;

    // The golden request lines of the spec (§4.1, §4.2, §4.5, §5), path after `/v7/`.
    #[test]
    fn release_by_id_is_golden() {
        assert_eq!(
            release_by_id(900813).to_wire(),
            "release(900813)?$expand=release_image($expand=image($select=id;$expand=is_a_build_of__service($select=service_name))),is_created_by__user($select=id,username)&$filter=status%20eq%20%27success%27"
        );
        assert_eq!(
            release_by_id(900813).compile(),
            "release(900813)?$expand=release_image($expand=image($select=id;$expand=is_a_build_of__service($select=service_name))),is_created_by__user($select=id,username)&$filter=status eq 'success'"
        );
    }

    #[test]
    fn release_by_commit_is_golden() {
        assert_eq!(
            releases_by_commit("84d3d8f").to_wire(),
            "release?$filter=startswith(commit,%2784d3d8f%27)%20and%20status%20eq%20%27success%27&$expand=release_image($expand=image($select=id;$expand=is_a_build_of__service($select=service_name))),is_created_by__user($select=id,username)"
        );
    }

    #[test]
    fn openbalena_release_queries_do_not_expand_the_user() {
        assert_eq!(
            openbalena_release_by_id(900813).to_wire(),
            "release(900813)?$expand=release_image($expand=image($select=id;$expand=is_a_build_of__service($select=service_name)))&$filter=status%20eq%20%27success%27"
        );
        assert_eq!(
            openbalena_releases_by_commit("84d3d8f").to_wire(),
            "release?$filter=startswith(commit,%2784d3d8f%27)%20and%20status%20eq%20%27success%27&$expand=release_image($expand=image($select=id;$expand=is_a_build_of__service($select=service_name)))"
        );
        assert_eq!(delta_probe().to_wire(), "delta?$select=id&$top=1");
    }

    #[test]
    fn image_is_golden() {
        assert_eq!(
            image(1115249).to_wire(),
            "image(1115249)?$select=id,is_stored_at__image_location,content_hash,image_size&$filter=status%20eq%20%27success%27"
        );
    }

    #[test]
    fn delta_is_golden() {
        let t = DateTime::parse_from_rfc3339("2021-09-01T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(
            latest_delta(1115249, 1115290, t).compile(),
            "delta?$top=1&$select=id,status,version,is_stored_at__location,size&$filter=version eq 3 and originates_from__image eq 1115249 and produces__image eq 1115290 and (status eq 'success' or (status eq 'running' and update_timestamp gt datetime'2021-09-01T10:00:00.000Z'))&$orderby=id desc"
        );
        assert_eq!(
            latest_delta(1115249, 1115290, t).to_wire(),
            "delta?$top=1&$select=id,status,version,is_stored_at__location,size&$filter=version%20eq%203%20and%20originates_from__image%20eq%201115249%20and%20produces__image%20eq%201115290%20and%20(status%20eq%20%27success%27%20or%20(status%20eq%20%27running%27%20and%20update_timestamp%20gt%20datetime%272021-09-01T10:00:00.000Z%27))&$orderby=id%20desc"
        );
    }

    #[test]
    fn strings_are_escaped_like_pinejs() {
        assert_eq!(Value::str("it's").compile(), "'it''s'");
        assert_eq!(Value::str("a b/é#").compile(), "'a%20b%2F%C3%A9%23'");
        assert_eq!(
            releases_by_commit("a'b").to_wire(),
            "release?$filter=startswith(commit,%27a%27%27b%27)%20and%20status%20eq%20%27success%27&$expand=release_image($expand=image($select=id;$expand=is_a_build_of__service($select=service_name))),is_created_by__user($select=id,username)"
        );
    }

    fn percent_decode(s: &str) -> Vec<u8> {
        percent_encoding::percent_decode_str(s).collect()
    }

    proptest::proptest! {
        #[test]
        fn encode_uri_component_round_trips(s in ".*") {
            let encoded = encode_uri_component(&s);
            proptest::prop_assert!(encoded
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.!~*'()%".contains(&b)));
            proptest::prop_assert_eq!(percent_decode(&encoded), s.as_bytes());
        }

        /// What reqwest sends is what we built: WHATWG URL parsing leaves it unchanged.
        #[test]
        fn wire_form_survives_url_parsing(prefix in ".{0,40}", id in proptest::num::u64::ANY) {
            for query in [releases_by_commit(&prefix), release_by_id(id), image(id)] {
                let wire = format!("https://api.example.com/v7/{}", query.to_wire());
                let parsed = url::Url::parse(&wire).unwrap();
                proptest::prop_assert_eq!(parsed.as_str(), wire.as_str());
            }
        }
    }

    #[test]
    fn single_operand_groups_are_not_parenthesised() {
        let f = Filter::And(vec![Filter::Or(vec![success()]), success()]);
        assert_eq!(f.compile(), "status eq 'success' and status eq 'success'");
    }
}
