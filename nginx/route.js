// Body routing inside nginx (njs): read `model` from the JSON body and jump to that model's named
// location, so that standard OpenAI clients are served without the waker in the path.
// The waker renders the ROUTES table below from config/models.toml; do not edit it by hand.

var ROUTES = {};  // ROUTES: name (id or alias) -> location key
var MODEL_IDS = [];  // MODEL_IDS
var RESERVED = {};  // RESERVED: first path segments of API routes
var DISABLED = {};  // DISABLED: name of a model declared but disabled -> why

var UTF8 = new TextDecoder('utf-8', {fatal: true});

function fail(r, status, code, message) {
    var kind = status < 500 ? 'invalid_request_error' : 'server_error';
    r.headersOut['Content-Type'] = 'application/json';
    r.return(status, JSON.stringify({error: {message: message, type: kind, param: null, code: code}}));
}

function unknownModel(r, name, where) {
    if (Object.prototype.hasOwnProperty.call(DISABLED, name)) {
        return fail(r, 404, 'model_disabled', 'model ' + JSON.stringify(name) + ' is disabled in the config: '
                    + DISABLED[name] + '; the models served are: ' + MODEL_IDS.join(', '));
    }
    fail(r, 404, 'model_not_found',
         'unknown model ' + JSON.stringify(name) + ' in ' + where + '; the models are: ' + MODEL_IDS.join(', '));
}

function dispatch(r) {
    var segments = r.uri.split('/');
    // /v1/<name>/...: a path-routed request whose name matched no model location.
    if (segments[1] === 'v1' && segments.length > 3 && !RESERVED[segments[2]]) {
        return unknownModel(r, segments[2], 'the path');
    }
    if (r.method !== 'POST') {
        return fail(r, 400, 'model_required',
                    r.method + ' ' + r.uri + ' does not name a model: send a POST with "model" in the JSON '
                    + 'body, or use /v1/<model>' + r.uri.replace(/^\/v1/, '') + '');
    }
    var raw = r.requestBuffer;
    if (!raw || !raw.length) {
        return fail(r, 400, 'missing_body', 'the request has no body: send a JSON object with a "model" field');
    }
    var body;
    try {
        body = UTF8.decode(raw);
    } catch (e) {
        return fail(r, 400, 'invalid_utf8', 'the request body is not valid UTF-8; JSON must be sent as UTF-8');
    }
    var doc;
    try {
        doc = JSON.parse(body);
    } catch (e) {
        return fail(r, 400, 'invalid_json',
                    'the request body is not valid JSON (' + e.message + '); send a JSON object with a "model" '
                    + 'field, or use path routing /v1/<model>/... for other bodies');
    }
    if (doc === null || typeof doc !== 'object' || Array.isArray(doc)) {
        return fail(r, 400, 'invalid_body', 'the request body must be a JSON object with a "model" field');
    }
    if (!('model' in doc)) {
        return fail(r, 400, 'missing_model', 'the request body has no "model" field; the models are: '
                    + MODEL_IDS.join(', '));
    }
    if (typeof doc.model !== 'string') {
        return fail(r, 400, 'invalid_model', '"model" must be a string naming one of: ' + MODEL_IDS.join(', '));
    }
    var key = Object.prototype.hasOwnProperty.call(ROUTES, doc.model) ? ROUTES[doc.model] : undefined;
    if (key === undefined) {
        return unknownModel(r, doc.model, 'the "model" field');
    }
    r.internalRedirect('@model_' + key);
}

export default {dispatch};
