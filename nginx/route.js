// Body routing inside nginx (njs): read `model` from the JSON body and jump to that model's named
// location, so that standard OpenAI clients are served without the waker in the path. Also the request
// fix-ups a model may declare (`fixups` in config/models.toml), applied in that model's locations only.
// The waker renders the tables below from config/models.toml; do not edit them by hand.

var ROUTES = {};  // ROUTES: name (id or alias) -> location key
var MODEL_IDS = [];  // MODEL_IDS
var RESERVED = {};  // RESERVED: first path segments of API routes
var DISABLED = {};  // DISABLED: name of a model declared but disabled -> why
var FIXUPS = {};  // FIXUPS: location key -> {fixups: [names, in the order they apply], context: tokens}

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
    if (FIXUPS[key]) {
        // Here, with the body parsed once and no second VM after the redirect.
        r.variables.waker_body = fixed(r, FIXUPS[key], doc);
    }
    r.internalRedirect('@model_' + key);
}

// ---- request fix-ups: each edits the parsed body in place and says whether it changed anything ----

function isObject(value) {
    return value !== null && typeof value === 'object' && !Array.isArray(value);
}

// vLLM answers 400 to a max_tokens over its --max-model-len; without one it uses what the context leaves.
function maxTokens(doc, model) {
    var changed = false;
    ['max_tokens', 'max_completion_tokens'].forEach(function (key) {
        if (typeof doc[key] === 'number' && doc[key] > model.context) {
            delete doc[key];
            changed = true;
        }
    });
    return changed;
}

// vLLM answers 400 to tools (tool_choice "auto" by default) when served without a tool parser.
function stripTools(doc) {
    var changed = false;
    ['tools', 'tool_choice', 'parallel_tool_calls', 'functions', 'function_call'].forEach(function (key) {
        if (key in doc) {
            delete doc[key];
            changed = true;
        }
    });
    return changed;
}

function textOf(content) {
    if (Array.isArray(content)) {
        return content.filter(function (part) { return part && part.type === 'text'; })
                      .map(function (part) { return part.text; }).join('\n');
    }
    return typeof content === 'string' ? content : '';
}

function parts(content) {
    if (Array.isArray(content)) {
        return content;
    }
    return typeof content === 'string' && content ? [{type: 'text', text: content}] : [];
}

function joined(first, second) {
    if (typeof first === 'string' && typeof second === 'string') {
        return first + '\n\n' + second;
    }
    return parts(first).concat(parts(second));
}

// Plain turns only: an assistant turn that calls tools, or a tool result, keeps its own identity.
function mergeable(previous, message) {
    return previous.role === message.role && (message.role === 'user' || message.role === 'assistant')
        && !previous.tool_calls && !message.tool_calls;
}

// For chat templates that demand user/assistant/user/...: as the original stack's validator did, system
// messages go to the front of the first user turn, same-role turns are merged, and a conversation that
// does not start with the user gets an empty user turn first.
function alternateRoles(doc) {
    if (!Array.isArray(doc.messages) || !doc.messages.every(isObject)) {
        return false;
    }
    var system = [];
    var turns = [];
    doc.messages.forEach(function (message) {
        var previous = turns[turns.length - 1];
        if (message.role === 'system') {
            system.push(textOf(message.content));
        } else if (previous && mergeable(previous, message)) {
            turns[turns.length - 1] = Object.assign({}, previous, {content: joined(previous.content, message.content)});
        } else {
            turns.push(message);
        }
    });
    if (system.length) {
        var prefix = '[System Instruction]\n' + system.join('\n\n') + '\n\n';
        if (turns.length && turns[0].role === 'user') {
            var first = turns[0].content;
            turns[0] = Object.assign({}, turns[0], {content: Array.isArray(first)
                ? [{type: 'text', text: prefix}].concat(first) : prefix + textOf(first)});
        } else {
            turns.unshift({role: 'user', content: prefix.trim()});
        }
    }
    if (turns.length && turns[0].role !== 'user') {
        turns.unshift({role: 'user', content: ' '});
    }
    var changed = turns.length !== doc.messages.length
        || turns.some(function (turn, i) { return turn !== doc.messages[i]; });
    doc.messages = turns;
    return changed;
}

function includeUsage(doc) {
    if (doc.stream !== true) {
        return false;
    }
    if (doc.stream_options === undefined || doc.stream_options === null) {
        doc.stream_options = {include_usage: true};
        return true;
    }
    if (!isObject(doc.stream_options) || doc.stream_options.include_usage === true) {
        return false;  // already asked for, or malformed: vLLM's own answer is the clearer one
    }
    doc.stream_options.include_usage = true;
    return true;
}

var EFFORTS = {none: 1, minimal: 1, low: 1, medium: 1, high: 1, xhigh: 1, max: 1, auto: 1};

// The original stack's mapping for Qwen3 thinking models: the effort OpenAI clients send (in any of
// the three places they put it) becomes the template's on/off switch, "none" meaning off; an effort
// it does not know is dropped; a switch the client set itself wins.
function thinking(doc) {
    var effort = [doc.reasoning_effort, doc.reasoningEffort, isObject(doc.reasoning) ? doc.reasoning.effort : undefined]
        .filter(function (value) { return typeof value === 'string'; })[0];
    if (effort === undefined) {
        return false;
    }
    effort = effort.trim().toLowerCase();
    delete doc.reasoning_effort;
    delete doc.reasoningEffort;
    if (isObject(doc.reasoning)) {
        delete doc.reasoning.effort;
        if (!Object.keys(doc.reasoning).length) {
            delete doc.reasoning;
        }
    }
    var kwargs = isObject(doc.chat_template_kwargs) ? doc.chat_template_kwargs : {};
    if (Object.prototype.hasOwnProperty.call(EFFORTS, effort)
        && kwargs.enable_thinking === undefined && kwargs.thinking === undefined) {
        kwargs.enable_thinking = effort !== 'none';
        kwargs.thinking = kwargs.enable_thinking;
        doc.chat_template_kwargs = kwargs;
    }
    return true;
}

// The original stack's rule for its coder models, which answer in text when tool_choice is "auto":
// while no tool has answered yet, a request with tools asks for a call.
function forceTools(doc) {
    var answered = Array.isArray(doc.messages) && doc.messages.some(function (m) { return isObject(m) && m.role === 'tool'; });
    if (!Array.isArray(doc.tools) || !doc.tools.length || answered
        || (doc.tool_choice !== undefined && doc.tool_choice !== null && doc.tool_choice !== 'auto')) {
        return false;
    }
    doc.tool_choice = 'required';
    return true;
}

// The original stack's rewrite for its Llama models, which quoted array and object arguments and called
// tools for a greeting: an instruction after the client's system messages (alternate_roles, after this,
// folds them into the first user turn as the original did), and a raw-JSON hint on every array and
// object parameter. Only a request with tools: the instruction is about calling them.
var TOOL_INSTRUCTION = 'CRITICAL INSTRUCTIONS:\n'
    + '1. When calling tools, you must provide array and object arguments as raw JSON values (e.g. [1, 2] or '
    + '{"key": "value"}), NOT as JSON strings. Do not quote these values.\n'
    + '2. If the user greets you (e.g. "Hi", "Hello"), reply with text. Do NOT call tools unless specifically '
    + 'needed for a task.';
var RAW_JSON = 'Provide as raw JSON, NOT a string';
var QUESTION_HINT = ' Only use this tool if you need to gather specific information for a task. '
    + 'Do not use for general greetings.';

function hintSchema(schema) {
    if (!isObject(schema)) {
        return;
    }
    if (schema.type === 'array' || schema.type === 'object') {
        if (typeof schema.description !== 'string' || !schema.description) {
            schema.description = RAW_JSON;
        } else if (schema.description.indexOf(RAW_JSON) < 0) {
            schema.description += ' (' + RAW_JSON + ')';
        }
    }
    if (isObject(schema.properties)) {
        Object.keys(schema.properties).forEach(function (key) { hintSchema(schema.properties[key]); });
    }
    hintSchema(schema.items);
}

function toolHints(doc) {
    if (!Array.isArray(doc.tools) || !doc.tools.length || !Array.isArray(doc.messages)) {
        return false;
    }
    var after = 0;  // after the client's own system messages, as the original appended it to them
    doc.messages.forEach(function (message, i) {
        if (isObject(message) && message.role === 'system') {
            after = i + 1;
        }
    });
    doc.messages.splice(after, 0, {role: 'system', content: TOOL_INSTRUCTION});
    doc.tools.forEach(function (tool) {
        var fn = isObject(tool) ? tool['function'] : null;
        if (!isObject(fn)) {
            return;
        }
        hintSchema(fn.parameters);
        if (fn.name === 'question') {
            fn.description = (typeof fn.description === 'string' ? fn.description : '') + QUESTION_HINT;
        }
    });
    return true;
}

// The original stack's default for models whose thinking hides the answer from clients (GLM-4.7
// Flash): off, unless the request (or the thinking fix-up, before this one) switched it itself.
function thinkingOff(doc) {
    var kwargs = isObject(doc.chat_template_kwargs) ? doc.chat_template_kwargs : {};
    if (kwargs.enable_thinking !== undefined || kwargs.thinking !== undefined) {
        return false;
    }
    kwargs.enable_thinking = false;
    kwargs.thinking = false;
    doc.chat_template_kwargs = kwargs;
    return true;
}

var FIX = {max_tokens: maxTokens, strip_tools: stripTools, force_tools: forceTools, tool_hints: toolHints,
           alternate_roles: alternateRoles, include_usage: includeUsage, thinking: thinking,
           thinking_off: thinkingOff};

// The body to send: the original bytes when no fix-up changes anything; $waker_fixups names those that did.
function fixed(r, model, doc) {
    try {
        var applied = model.fixups.filter(function (name) { return FIX[name](doc, model); });
        if (applied.length) {
            r.variables.waker_fixups = applied.join(',');
            return JSON.stringify(doc);
        }
    } catch (e) {
        r.error('request fix-ups failed, the body goes as it came: ' + e.message);
    }
    return r.requestText;
}

// js_set $waker_fixed_body, for path routing: anything that is not a JSON object goes as it came.
// Kept in $waker_body too, for the replay after a cold start.
function fixedBody(r) {
    var text = r.requestText || '';
    var model = FIXUPS[r.variables.waker_fixups_for];
    var doc = null;
    try {
        doc = model && text ? JSON.parse(text) : null;
    } catch (e) {
        doc = null;
    }
    var body = isObject(doc) ? fixed(r, model, doc) : text;
    r.variables.waker_body = body;
    return body;
}

export default {dispatch, fixedBody};
