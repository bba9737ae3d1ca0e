//! OpenAPI v3, just enough for kubectl: `/openapi/v3` lists one document per group version,
//! and each document's operations carry `x-kubernetes-group-version-kind` and a
//! `fieldValidation` parameter, so `kubectl apply` leaves validation to the server
//! (`fieldValidation=Strict`). Schemas come from the resource table.

use axum::extract::Path;
use axum::Json;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use super::resources::{self, ResourceInfo, Schema, OBJECT_META};
use super::status::ApiError;

fn doc_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

pub async fn index() -> Json<Value> {
    let mut paths = Map::new();
    for (group, version) in resources::group_versions() {
        let path = doc_path(group, version);
        let hash = hex::encode_upper(
            &Sha256::digest(document_for(group, version).to_string().as_bytes())[..32],
        );
        paths.insert(
            path.clone(),
            json!({"serverRelativeURL": format!("/openapi/v3/{path}?hash={hash}")}),
        );
    }
    Json(json!({ "paths": paths }))
}

pub async fn document(Path(path): Path<String>) -> Result<Json<Value>, ApiError> {
    resources::group_versions()
        .into_iter()
        .find(|(g, v)| doc_path(g, v) == path.trim_matches('/'))
        .map(|(g, v)| Json(document_for(g, v)))
        .ok_or(ApiError::NoRoute)
}

fn schema_json(schema: &Schema) -> Value {
    match schema {
        Schema::Any => json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true}),
        Schema::String => json!({"type": "string"}),
        Schema::Bool => json!({"type": "boolean"}),
        Schema::Int => json!({"type": "integer", "format": "int64"}),
        Schema::Object(fields) => {
            let props: Map<String, Value> = fields
                .iter()
                .map(|(n, s)| (n.to_string(), schema_json(s)))
                .collect();
            json!({"type": "object", "properties": props})
        }
        Schema::MapOf(inner) => {
            json!({"type": "object", "additionalProperties": schema_json(inner)})
        }
        Schema::ListOf(inner) => json!({"type": "array", "items": schema_json(inner)}),
    }
}

fn schema_name(info: &ResourceInfo) -> String {
    let group = if info.group.is_empty() {
        "core"
    } else {
        info.group
    };
    format!("io.k8s.api.{group}.{}.{}", info.version, info.kind)
}

fn gvk(info: &ResourceInfo) -> Value {
    json!({"group": info.group, "version": info.version, "kind": info.kind})
}

fn param(name: &str, location: &str, description: &str) -> Value {
    json!({"name": name, "in": location, "description": description, "schema": {"type": "string", "uniqueItems": true}})
}

fn body_params() -> Vec<Value> {
    vec![
        param("dryRun", "query", "When present, indicates that modifications should not be persisted. Valid value: All"),
        param("fieldManager", "query", "A name associated with the actor making these changes."),
        param(
            "fieldValidation",
            "query",
            "How the server treats unknown fields in the request body: Ignore, Warn or Strict (reject).",
        ),
    ]
}

fn operation(info: &ResourceInfo, action: &str, verb_prefix: &str, body: Option<&[&str]>) -> Value {
    let reference = json!({"$ref": format!("#/components/schemas/{}", schema_name(info))});
    let scope = if info.namespaced { "Namespaced" } else { "" };
    let mut op = json!({
        "operationId": format!("{verb_prefix}{}{scope}{}", if info.group.is_empty() { "CoreV1" } else { "" }, info.kind),
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": gvk(info),
        "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": reference}}}},
    });
    if let Some(media_types) = body {
        let content: Map<String, Value> = media_types
            .iter()
            .map(|m| (m.to_string(), json!({"schema": reference})))
            .collect();
        op["requestBody"] = json!({"content": content, "required": true});
        op["parameters"] = json!(body_params());
    }
    op
}

fn path_params(info: &ResourceInfo, with_name: bool) -> Vec<Value> {
    let mut params = Vec::new();
    if with_name {
        params.push(
            json!({"name": "name", "in": "path", "required": true, "schema": {"type": "string"}}),
        );
    }
    if info.namespaced {
        params.push(json!({"name": "namespace", "in": "path", "required": true, "schema": {"type": "string"}}));
    }
    params
}

fn document_for(group: &str, version: &str) -> Value {
    let mut paths = Map::new();
    let mut schemas = Map::new();
    schemas.insert(
        "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta".into(),
        schema_json(&OBJECT_META),
    );
    for info in resources::in_group_version(group, version) {
        let base = info.group_version_path();
        let collection = if info.namespaced {
            format!("{base}/namespaces/{{namespace}}/{}", info.plural)
        } else {
            format!("{base}/{}", info.plural)
        };
        let mut list_item = Map::new();
        list_item.insert("parameters".into(), json!(path_params(info, false)));
        if info.allows("list") {
            list_item.insert("get".into(), operation(info, "list", "list", None));
        }
        if info.allows("create") {
            list_item.insert(
                "post".into(),
                operation(
                    info,
                    "post",
                    "create",
                    Some(&["application/json", "application/yaml"]),
                ),
            );
        }
        paths.insert(collection.clone(), Value::Object(list_item));
        let mut item = Map::new();
        item.insert("parameters".into(), json!(path_params(info, true)));
        item.insert("get".into(), operation(info, "get", "read", None));
        if info.allows("update") {
            item.insert(
                "put".into(),
                operation(
                    info,
                    "put",
                    "replace",
                    Some(&["application/json", "application/yaml"]),
                ),
            );
        }
        if info.allows("patch") {
            // Without `application/strategic-merge-patch+json` here kubectl computes strategic
            // merge patches from its compiled-in types, which knows every list merge key.
            let patch_types: &[&str] = &[
                "application/json-patch+json",
                "application/merge-patch+json",
            ];
            item.insert(
                "patch".into(),
                operation(info, "patch", "patch", Some(patch_types)),
            );
        }
        if info.allows("delete") {
            item.insert("delete".into(), operation(info, "delete", "delete", None));
        }
        paths.insert(format!("{collection}/{{name}}"), Value::Object(item));
        let mut schema = schema_json(info.schema);
        if let Some(props) = schema["properties"].as_object_mut() {
            props.insert(
                "metadata".into(),
                json!({"$ref": "#/components/schemas/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"}),
            );
        }
        schema["x-kubernetes-group-version-kind"] = json!([gvk(info)]);
        schemas.insert(schema_name(info), schema);
    }
    json!({
        "openapi": "3.0.0",
        "info": {"title": "shoal", "version": format!("v1.32.0-shoal.{}", crate::VERSION)},
        "paths": paths,
        "components": {"schemas": schemas},
    })
}
