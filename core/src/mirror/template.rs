//! The subset of Go's `text/template` that kubemirror's transform templates use, so that its
//! documented templates render identically: actions with `{{-`/`-}}` trimming and comments,
//! pipelines (the piped value is the last argument), parentheses, variables, literals,
//! `if`/`else if`/`else`/`with`/`range`/`end`, the functions `upper`, `lower`, `trimPrefix`,
//! `trimSuffix`, `replace`, `hasPrefix`, `hasSuffix`, `default`, and Go's builtins `and`, `or`,
//! `not`, `eq`, `ne`, `lt`, `le`, `gt`, `ge`, `len`, `index`, `slice`, `print`, `printf`,
//! `println`, `html`, `js`, `urlquery`. `define`, `template`, `block` and `call` are errors.
//!
//! Execution is bounded: at most [`MAX_OUTPUT`] bytes of output and [`MAX_TIME`] of work.
//! The data is the fixed context of a transform ([`Context`]): an unknown field is an execution
//! error; a missing map key prints `<no value>` and is nil as a function argument.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// The most output a template may produce.
pub const MAX_OUTPUT: usize = 64 * 1024;
/// The longest a template may run.
pub const MAX_TIME: Duration = Duration::from_millis(100);

/// What a transform template sees as `.`.
#[derive(Debug, Clone, Default)]
pub struct Context {
    /// `.TargetNamespace`.
    pub target_namespace: String,
    /// `.SourceNamespace`.
    pub source_namespace: String,
    /// `.SourceName`.
    pub source_name: String,
    /// `.TargetName` (the source's name).
    pub target_name: String,
    /// `.Labels` of the source.
    pub labels: BTreeMap<String, String>,
    /// `.Annotations` of the source.
    pub annotations: BTreeMap<String, String>,
}

/// A template value.
#[derive(Debug, Clone, PartialEq)]
enum V {
    Nil,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Map(BTreeMap<String, String>),
    Ctx,
}

impl V {
    fn truthy(&self) -> bool {
        match self {
            V::Nil => false,
            V::Bool(b) => *b,
            V::Int(i) => *i != 0,
            V::Float(f) => *f != 0.0,
            V::Str(s) => !s.is_empty(),
            V::Map(m) => !m.is_empty(),
            V::Ctx => true,
        }
    }

    /// Go's `fmt.Sprint` of one value.
    fn print(&self) -> String {
        match self {
            V::Nil => "<no value>".into(),
            V::Bool(b) => b.to_string(),
            V::Int(i) => i.to_string(),
            V::Float(f) => format_float(*f),
            V::Str(s) => s.clone(),
            V::Map(m) => {
                let items: Vec<String> = m.iter().map(|(k, v)| format!("{k}:{v}")).collect();
                format!("map[{}]", items.join(" "))
            }
            V::Ctx => "{…}".into(),
        }
    }

    fn is_string(&self) -> bool {
        matches!(self, V::Str(_))
    }
}

fn format_float(f: f64) -> String {
    if f.fract() == 0.0 && f.abs() < 1e21 {
        format!("{f:.0}")
    } else {
        f.to_string()
    }
}

/// A template error, in the words Go would use where it matters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateError(pub String);

impl std::fmt::Display for TemplateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn err<T>(msg: impl Into<String>) -> Result<T, TemplateError> {
    Err(TemplateError(msg.into()))
}

// ---------------------------------------------------------------------------------------------
// Lexing: text and actions.

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Dot,
    /// `.Name` starting an operand (after whitespace or an opening token).
    Field(String),
    /// `.Name` right after an operand (`$x.Name`, `(…).Name`, `.A.B`): a field of it.
    Chain(String),
    Var(String),
    Ident(String),
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    Nil,
    Pipe,
    LParen,
    RParen,
    Declare,
    Assign,
    Comma,
}

#[derive(Debug)]
enum Piece {
    Text(String),
    Action(Vec<Tok>),
}

fn split_pieces(src: &str) -> Result<Vec<Piece>, TemplateError> {
    let mut out = Vec::new();
    let mut rest = src;
    let mut trim_next = false;
    while let Some(open) = rest.find("{{") {
        let mut text = &rest[..open];
        if trim_next {
            text = text.trim_start();
        }
        let after = &rest[open + 2..];
        let trim_left =
            after.starts_with("- ") || after.starts_with("-\t") || after.starts_with("-\n");
        if trim_left {
            text = text.trim_end();
        }
        if !text.is_empty() {
            out.push(Piece::Text(text.to_owned()));
        }
        let body_start = if trim_left { &after[1..] } else { after };
        let close = body_start
            .find("}}")
            .ok_or_else(|| TemplateError("unclosed action".into()))?;
        let mut body = &body_start[..close];
        trim_next = body.ends_with(" -") || body.ends_with("\t-") || body.ends_with("\n-");
        if trim_next {
            body = &body[..body.len() - 1];
        }
        rest = &body_start[close + 2..];
        let b = body.trim();
        if b.starts_with("/*") {
            if !b.ends_with("*/") {
                return err("unclosed comment");
            }
            continue;
        }
        out.push(Piece::Action(lex(body)?));
    }
    let mut text = rest;
    if trim_next {
        text = text.trim_start();
    }
    if !text.is_empty() {
        out.push(Piece::Text(text.to_owned()));
    }
    Ok(out)
}

fn lex(s: &str) -> Result<Vec<Tok>, TemplateError> {
    let c: Vec<char> = s.chars().collect();
    let mut i = 0;
    let mut out = Vec::new();
    let ident = |c: char| c.is_alphanumeric() || c == '_';
    while i < c.len() {
        let ch = c[i];
        match ch {
            ' ' | '\t' | '\n' | '\r' => i += 1,
            '|' => {
                out.push(Tok::Pipe);
                i += 1
            }
            '(' => {
                out.push(Tok::LParen);
                i += 1
            }
            ')' => {
                out.push(Tok::RParen);
                i += 1
            }
            ',' => {
                out.push(Tok::Comma);
                i += 1
            }
            ':' if c.get(i + 1) == Some(&'=') => {
                out.push(Tok::Declare);
                i += 2
            }
            '=' => {
                out.push(Tok::Assign);
                i += 1
            }
            '"' => {
                let mut s = String::new();
                i += 1;
                loop {
                    let Some(&ch) = c.get(i) else {
                        return err("unterminated quoted string");
                    };
                    i += 1;
                    match ch {
                        '"' => break,
                        '\\' => {
                            let e = *c.get(i).ok_or_else(|| TemplateError("bad escape".into()))?;
                            i += 1;
                            s.push(match e {
                                'n' => '\n',
                                't' => '\t',
                                'r' => '\r',
                                '\\' => '\\',
                                '"' => '"',
                                '\'' => '\'',
                                other => return err(format!("unknown escape \\{other}")),
                            });
                        }
                        other => s.push(other),
                    }
                }
                out.push(Tok::Str(s));
            }
            '`' => {
                let start = i + 1;
                let end = c[start..]
                    .iter()
                    .position(|&x| x == '`')
                    .ok_or_else(|| TemplateError("unterminated raw string".into()))?;
                out.push(Tok::Str(c[start..start + end].iter().collect()));
                i = start + end + 1;
            }
            '.' => {
                let start = i + 1;
                let mut j = start;
                while j < c.len() && ident(c[j]) {
                    j += 1;
                }
                let chained = i > 0 && (ident(c[i - 1]) || matches!(c[i - 1], ')' | '$'));
                if j == start {
                    out.push(Tok::Dot);
                } else if chained {
                    out.push(Tok::Chain(c[start..j].iter().collect()));
                } else {
                    out.push(Tok::Field(c[start..j].iter().collect()));
                }
                i = j;
            }
            '$' => {
                let start = i + 1;
                let mut j = start;
                while j < c.len() && ident(c[j]) {
                    j += 1;
                }
                out.push(Tok::Var(c[start..j].iter().collect()));
                i = j;
            }
            '-' | '+' | '0'..='9' => {
                let start = i;
                let mut j = i + 1;
                while j < c.len() && (c[j].is_ascii_alphanumeric() || c[j] == '.' || c[j] == '_') {
                    j += 1;
                }
                let text: String = c[start..j].iter().collect::<String>().replace('_', "");
                if let Ok(v) = parse_int(&text) {
                    out.push(Tok::Int(v));
                } else if let Ok(f) = text.parse::<f64>() {
                    out.push(Tok::Float(f));
                } else {
                    return err(format!("bad number syntax: {text:?}"));
                }
                i = j;
            }
            _ if ch.is_alphabetic() || ch == '_' => {
                let start = i;
                while i < c.len() && ident(c[i]) {
                    i += 1;
                }
                let word: String = c[start..i].iter().collect();
                out.push(match word.as_str() {
                    "true" => Tok::Bool(true),
                    "false" => Tok::Bool(false),
                    "nil" => Tok::Nil,
                    _ => Tok::Ident(word),
                });
            }
            other => return err(format!("unexpected {other:?} in action")),
        }
    }
    Ok(out)
}

fn parse_int(s: &str) -> Result<i64, ()> {
    let (neg, s) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    let v = if let Some(h) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        i64::from_str_radix(h, 16).map_err(drop)?
    } else if let Some(o) = s.strip_prefix("0o") {
        i64::from_str_radix(o, 8).map_err(drop)?
    } else {
        s.parse::<i64>().map_err(drop)?
    };
    Ok(if neg { -v } else { v })
}

// ---------------------------------------------------------------------------------------------
// Parsing into a tree.

#[derive(Debug, Clone)]
enum Arg {
    Dot,
    Fields(Box<Arg>, Vec<String>),
    CtxField(Vec<String>),
    Var(String),
    Lit(V),
    Func(String),
    Pipe(Box<Pipeline>),
}

#[derive(Debug, Clone)]
struct Command(Vec<Arg>);

#[derive(Debug, Clone)]
struct Pipeline {
    decl: Vec<String>,
    assign: bool,
    commands: Vec<Command>,
}

#[derive(Debug)]
enum Node {
    Text(String),
    Print(Pipeline),
    If(Pipeline, Vec<Node>, Vec<Node>),
    With(Pipeline, Vec<Node>, Vec<Node>),
    Range(Pipeline, Vec<Node>, Vec<Node>),
}

struct Toks<'a> {
    t: &'a [Tok],
    i: usize,
}

impl Toks<'_> {
    fn peek(&self) -> Option<&Tok> {
        self.t.get(self.i)
    }
    fn next(&mut self) -> Option<Tok> {
        let t = self.t.get(self.i).cloned();
        self.i += 1;
        t
    }
}

fn parse_pipeline(t: &mut Toks<'_>) -> Result<Pipeline, TemplateError> {
    let mut decl = Vec::new();
    let mut assign = false;
    // `$x :=`, `$k, $v :=`, `$x =`
    let save = t.i;
    let mut vars = Vec::new();
    while let Some(Tok::Var(v)) = t.peek().cloned() {
        t.next();
        vars.push(v);
        match t.peek() {
            Some(Tok::Comma) => {
                t.next();
            }
            Some(Tok::Declare) => {
                t.next();
                decl = vars.clone();
                break;
            }
            Some(Tok::Assign) => {
                t.next();
                decl = vars.clone();
                assign = true;
                break;
            }
            _ => break,
        }
    }
    if decl.is_empty() {
        t.i = save;
    }
    let mut commands = Vec::new();
    loop {
        let mut args = Vec::new();
        while let Some(tok) = t.peek() {
            if matches!(tok, Tok::Pipe | Tok::RParen) {
                break;
            }
            args.push(parse_operand(t)?);
        }
        if args.is_empty() {
            return err("missing value for command");
        }
        commands.push(Command(args));
        if t.peek() == Some(&Tok::Pipe) {
            t.next();
            continue;
        }
        break;
    }
    Ok(Pipeline {
        decl,
        assign,
        commands,
    })
}

fn parse_operand(t: &mut Toks<'_>) -> Result<Arg, TemplateError> {
    let base = match t.next() {
        Some(Tok::Dot) => Arg::Dot,
        Some(Tok::Field(f)) => {
            let mut fields = vec![f];
            while let Some(Tok::Chain(f)) = t.peek().cloned() {
                t.next();
                fields.push(f);
            }
            return Ok(Arg::CtxField(fields));
        }
        Some(Tok::Var(v)) => Arg::Var(v),
        Some(Tok::Str(s)) => Arg::Lit(V::Str(s)),
        Some(Tok::Int(i)) => Arg::Lit(V::Int(i)),
        Some(Tok::Float(f)) => Arg::Lit(V::Float(f)),
        Some(Tok::Bool(b)) => Arg::Lit(V::Bool(b)),
        Some(Tok::Nil) => Arg::Lit(V::Nil),
        Some(Tok::Ident(name)) => Arg::Func(name),
        Some(Tok::LParen) => {
            let p = parse_pipeline(t)?;
            if t.next() != Some(Tok::RParen) {
                return err("unclosed left paren");
            }
            Arg::Pipe(Box::new(p))
        }
        other => return err(format!("unexpected {other:?} in operand")),
    };
    let mut fields = Vec::new();
    while let Some(Tok::Chain(f)) = t.peek().cloned() {
        t.next();
        fields.push(f);
    }
    Ok(if fields.is_empty() {
        base
    } else {
        Arg::Fields(Box::new(base), fields)
    })
}

enum Control {
    Node(Node),
    Else(Option<Pipeline>),
    End,
}

fn parse_action(toks: Vec<Tok>) -> Result<Control, TemplateError> {
    let keyword = match toks.first() {
        Some(Tok::Ident(k)) => k.clone(),
        _ => String::new(),
    };
    let mut t = Toks { t: &toks, i: 1 };
    let whole = |t: &mut Toks<'_>| -> Result<Pipeline, TemplateError> {
        let p = parse_pipeline(t)?;
        if t.i < t.t.len() {
            return err("unexpected tokens after pipeline");
        }
        Ok(p)
    };
    match keyword.as_str() {
        "end" if toks.len() == 1 => Ok(Control::End),
        "else" => {
            if toks.len() == 1 {
                return Ok(Control::Else(None));
            }
            if toks.get(1) == Some(&Tok::Ident("if".into())) {
                t.i = 2;
                return Ok(Control::Else(Some(whole(&mut t)?)));
            }
            err("else must be followed by if or stand alone")
        }
        "if" => Ok(Control::Node(Node::If(whole(&mut t)?, vec![], vec![]))),
        "with" => Ok(Control::Node(Node::With(whole(&mut t)?, vec![], vec![]))),
        "range" => Ok(Control::Node(Node::Range(whole(&mut t)?, vec![], vec![]))),
        "define" | "template" | "block" | "break" | "continue" => err(format!(
            "{keyword:?} is not supported in transform templates"
        )),
        _ => {
            let mut t = Toks { t: &toks, i: 0 };
            Ok(Control::Node(Node::Print(whole(&mut t)?)))
        }
    }
}

/// Parses until `end` (or the end of input when `top`); returns the list and, inside a block,
/// the `else` branch.
fn parse_list(
    pieces: &mut std::vec::IntoIter<Piece>,
    top: bool,
) -> Result<(Vec<Node>, Option<Vec<Node>>), TemplateError> {
    let mut nodes = Vec::new();
    while let Some(p) = pieces.next() {
        match p {
            Piece::Text(s) => nodes.push(Node::Text(s)),
            Piece::Action(toks) => match parse_action(toks)? {
                Control::End if !top => return Ok((nodes, None)),
                Control::End => return err("unexpected {{end}}"),
                Control::Else(_) if top => return err("unexpected {{else}}"),
                Control::Else(None) => {
                    let (else_nodes, more) = parse_list(pieces, false)?;
                    if more.is_some() {
                        return err("more than one {{else}}");
                    }
                    return Ok((nodes, Some(else_nodes)));
                }
                Control::Else(Some(cond)) => {
                    // `else if c` is `else {{if c}} … {{end}}` sharing this block's end.
                    let (then, els) = parse_list(pieces, false)?;
                    let inner = Node::If(cond, then, els.unwrap_or_default());
                    return Ok((nodes, Some(vec![inner])));
                }
                Control::Node(mut n) => {
                    if let Node::If(_, a, b) | Node::With(_, a, b) | Node::Range(_, a, b) = &mut n {
                        let (then, els) = parse_list(pieces, false)?;
                        *a = then;
                        *b = els.unwrap_or_default();
                    }
                    nodes.push(n);
                }
            },
        }
    }
    if top {
        Ok((nodes, None))
    } else {
        err("unexpected EOF: missing {{end}}")
    }
}

/// A parsed template.
#[derive(Debug)]
pub struct Template {
    nodes: Vec<Node>,
}

impl Template {
    /// Parses `src`.
    pub fn parse(src: &str) -> Result<Template, TemplateError> {
        let pieces = split_pieces(src)?;
        let (nodes, _) = parse_list(&mut pieces.into_iter(), true)?;
        Ok(Template { nodes })
    }

    /// Executes the template with `ctx` as `.`.
    pub fn execute(&self, ctx: &Context) -> Result<String, TemplateError> {
        self.execute_by(ctx, Instant::now() + MAX_TIME)
    }

    /// Executes the template, failing once `deadline` passed.
    fn execute_by(&self, ctx: &Context, deadline: Instant) -> Result<String, TemplateError> {
        let mut ex = Exec {
            ctx,
            out: String::new(),
            vars: vec![("".into(), V::Ctx)],
            deadline,
        };
        ex.list(&self.nodes, &V::Ctx)?;
        Ok(ex.out)
    }
}

/// Parses and executes `src` once.
pub fn render(src: &str, ctx: &Context) -> Result<String, TemplateError> {
    Template::parse(src)?.execute(ctx)
}

// ---------------------------------------------------------------------------------------------
// Execution.

struct Exec<'a> {
    ctx: &'a Context,
    out: String,
    vars: Vec<(String, V)>,
    deadline: Instant,
}

impl Exec<'_> {
    fn check(&self) -> Result<(), TemplateError> {
        if self.out.len() > MAX_OUTPUT {
            return err(format!("template output exceeds {MAX_OUTPUT} bytes"));
        }
        if Instant::now() > self.deadline {
            return err("template execution timeout");
        }
        Ok(())
    }

    fn list(&mut self, nodes: &[Node], dot: &V) -> Result<(), TemplateError> {
        for n in nodes {
            self.check()?;
            match n {
                Node::Text(s) => self.out.push_str(s),
                Node::Print(p) => {
                    let v = self.pipeline(p, dot)?;
                    if p.decl.is_empty() {
                        self.out.push_str(&v.print());
                    }
                }
                Node::If(p, a, b) => {
                    let mark = self.vars.len();
                    let v = self.pipeline(p, dot)?;
                    self.list(if v.truthy() { a } else { b }, dot)?;
                    self.vars.truncate(mark);
                }
                Node::With(p, a, b) => {
                    let mark = self.vars.len();
                    let v = self.pipeline(p, dot)?;
                    if v.truthy() {
                        self.list(a, &v)?;
                    } else {
                        self.list(b, dot)?;
                    }
                    self.vars.truncate(mark);
                }
                Node::Range(p, a, b) => {
                    let mark = self.vars.len();
                    let mut p2 = p.clone();
                    let names = std::mem::take(&mut p2.decl);
                    let v = self.pipeline(&p2, dot)?;
                    let items: Vec<(V, V)> = match v {
                        V::Map(m) => m.into_iter().map(|(k, v)| (V::Str(k), V::Str(v))).collect(),
                        V::Int(n) if n >= 0 => (0..n).map(|i| (V::Int(i), V::Int(i))).collect(),
                        V::Nil => vec![],
                        other => return err(format!("range can't iterate over {}", other.print())),
                    };
                    if items.is_empty() {
                        self.list(b, dot)?;
                    }
                    for (k, v) in items {
                        match names.as_slice() {
                            [] => {}
                            [one] => self.vars.push((one.clone(), v.clone())),
                            [kn, vn] => {
                                self.vars.push((kn.clone(), k));
                                self.vars.push((vn.clone(), v.clone()));
                            }
                            _ => return err("too many range variables"),
                        }
                        self.list(a, &v)?;
                        self.vars.truncate(mark);
                        self.check()?;
                    }
                }
            }
        }
        Ok(())
    }

    fn pipeline(&mut self, p: &Pipeline, dot: &V) -> Result<V, TemplateError> {
        let mut prev: Option<V> = None;
        for c in &p.commands {
            prev = Some(self.command(c, dot, prev)?);
        }
        let v = prev.unwrap_or(V::Nil);
        if p.assign {
            for name in &p.decl {
                let slot = self
                    .vars
                    .iter_mut()
                    .rev()
                    .find(|(n, _)| n == name)
                    .ok_or_else(|| TemplateError(format!("undefined variable ${name}")))?;
                slot.1 = v.clone();
            }
        } else {
            for name in &p.decl {
                self.vars.push((name.clone(), v.clone()));
            }
        }
        Ok(v)
    }

    fn command(&mut self, c: &Command, dot: &V, piped: Option<V>) -> Result<V, TemplateError> {
        let first = &c.0[0];
        if let Arg::Func(name) = first {
            let mut args = Vec::with_capacity(c.0.len());
            for a in &c.0[1..] {
                args.push(self.arg(a, dot)?);
            }
            if let Some(p) = piped {
                args.push(p);
            }
            return self.call(name, args);
        }
        if c.0.len() > 1 || piped.is_some() {
            return err(format!("can't give argument to non-function {first:?}"));
        }
        self.arg(first, dot)
    }

    fn arg(&mut self, a: &Arg, dot: &V) -> Result<V, TemplateError> {
        match a {
            Arg::Dot => Ok(dot.clone()),
            Arg::Lit(v) => Ok(v.clone()),
            Arg::Var(name) => self
                .vars
                .iter()
                .rev()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.clone())
                .ok_or_else(|| TemplateError(format!("undefined variable ${name}"))),
            Arg::CtxField(fields) => self.fields(dot.clone(), fields),
            Arg::Fields(base, fields) => {
                let v = self.arg(base, dot)?;
                self.fields(v, fields)
            }
            Arg::Func(name) => self.call(name, vec![]),
            Arg::Pipe(p) => self.pipeline(p, dot),
        }
    }

    fn fields(&self, mut v: V, fields: &[String]) -> Result<V, TemplateError> {
        for f in fields {
            v = match v {
                V::Ctx => match f.as_str() {
                    "TargetNamespace" => V::Str(self.ctx.target_namespace.clone()),
                    "SourceNamespace" => V::Str(self.ctx.source_namespace.clone()),
                    "SourceName" => V::Str(self.ctx.source_name.clone()),
                    "TargetName" => V::Str(self.ctx.target_name.clone()),
                    "Labels" => V::Map(self.ctx.labels.clone()),
                    "Annotations" => V::Map(self.ctx.annotations.clone()),
                    other => {
                        return err(format!(
                            "can't evaluate field {other} in type transform.TemplateContext"
                        ));
                    }
                },
                V::Map(m) => m.get(f).cloned().map_or(V::Nil, V::Str),
                V::Nil => return err(format!("nil pointer evaluating .{f}")),
                other => {
                    return err(format!(
                        "can't evaluate field {f} in type {}",
                        type_name(&other)
                    ));
                }
            };
        }
        Ok(v)
    }

    fn call(&mut self, name: &str, args: Vec<V>) -> Result<V, TemplateError> {
        let want = |n: usize| -> Result<(), TemplateError> {
            if args.len() != n {
                return err(format!(
                    "wrong number of args for {name}: want {n} got {}",
                    args.len()
                ));
            }
            Ok(())
        };
        let s = |v: &V| -> Result<String, TemplateError> {
            match v {
                V::Str(s) => Ok(s.clone()),
                other => err(format!(
                    "wrong type for value; expected string; got {}",
                    type_name(other)
                )),
            }
        };
        Ok(match name {
            "upper" => {
                want(1)?;
                V::Str(s(&args[0])?.to_uppercase())
            }
            "lower" => {
                want(1)?;
                V::Str(s(&args[0])?.to_lowercase())
            }
            "trimPrefix" => {
                want(2)?;
                let (a, p) = (s(&args[0])?, s(&args[1])?);
                V::Str(a.strip_prefix(p.as_str()).unwrap_or(&a).to_owned())
            }
            "trimSuffix" => {
                want(2)?;
                let (a, p) = (s(&args[0])?, s(&args[1])?);
                V::Str(a.strip_suffix(p.as_str()).unwrap_or(&a).to_owned())
            }
            "replace" => {
                want(3)?;
                let (a, old, new) = (s(&args[0])?, s(&args[1])?, s(&args[2])?);
                V::Str(go_replace_all(&a, &old, &new))
            }
            "hasPrefix" => {
                want(2)?;
                V::Bool(s(&args[0])?.starts_with(s(&args[1])?.as_str()))
            }
            "hasSuffix" => {
                want(2)?;
                V::Bool(s(&args[0])?.ends_with(s(&args[1])?.as_str()))
            }
            "default" => {
                want(2)?;
                match &args[1] {
                    V::Nil => args[0].clone(),
                    V::Str(v) if v.is_empty() => args[0].clone(),
                    v => v.clone(),
                }
            }
            "and" => {
                if args.is_empty() {
                    return err("wrong number of args for and: want at least 1 got 0");
                }
                args.iter()
                    .find(|a| !a.truthy())
                    .unwrap_or_else(|| args.last().expect("non-empty"))
                    .clone()
            }
            "or" => {
                if args.is_empty() {
                    return err("wrong number of args for or: want at least 1 got 0");
                }
                args.iter()
                    .find(|a| a.truthy())
                    .unwrap_or_else(|| args.last().expect("non-empty"))
                    .clone()
            }
            "not" => {
                want(1)?;
                V::Bool(!args[0].truthy())
            }
            "eq" => {
                if args.len() < 2 {
                    return err("missing argument for comparison");
                }
                let mut any = false;
                for b in &args[1..] {
                    any |= compare(&args[0], b)? == std::cmp::Ordering::Equal;
                }
                V::Bool(any)
            }
            "ne" => {
                want(2)?;
                V::Bool(compare(&args[0], &args[1])? != std::cmp::Ordering::Equal)
            }
            "lt" | "le" | "gt" | "ge" => {
                want(2)?;
                if matches!(args[0], V::Bool(_)) || matches!(args[1], V::Bool(_)) {
                    return err("invalid type for comparison");
                }
                let o = compare(&args[0], &args[1])?;
                V::Bool(match name {
                    "lt" => o.is_lt(),
                    "le" => o.is_le(),
                    "gt" => o.is_gt(),
                    _ => o.is_ge(),
                })
            }
            "len" => {
                want(1)?;
                match &args[0] {
                    V::Str(s) => V::Int(s.len() as i64),
                    V::Map(m) => V::Int(m.len() as i64),
                    other => return err(format!("len of type {}", type_name(other))),
                }
            }
            "index" => {
                if args.is_empty() {
                    return err("index of untyped nil");
                }
                let mut v = args[0].clone();
                for k in &args[1..] {
                    v = match (&v, k) {
                        (V::Map(m), V::Str(key)) => m.get(key).cloned().map_or(V::Nil, V::Str),
                        (V::Map(_), other) => {
                            return err(format!(
                                "value has type {}; should be string",
                                type_name(other)
                            ));
                        }
                        (V::Str(s), V::Int(i)) => {
                            let b = s.as_bytes();
                            let idx = usize::try_from(*i)
                                .ok()
                                .filter(|&i| i < b.len())
                                .ok_or_else(|| TemplateError(format!("index out of range: {i}")))?;
                            V::Int(i64::from(b[idx]))
                        }
                        (V::Nil, _) => return err("index of untyped nil"),
                        (other, _) => {
                            return err(format!("can't index item of type {}", type_name(other)));
                        }
                    };
                }
                v
            }
            "slice" => {
                let Some(V::Str(st)) = args.first() else {
                    return err("can't slice item that is not a string");
                };
                let idx: Vec<usize> = args[1..]
                    .iter()
                    .map(|a| match a {
                        V::Int(i) if *i >= 0 => Ok(*i as usize),
                        _ => err("slice index must be a non-negative integer"),
                    })
                    .collect::<Result<_, _>>()?;
                let (lo, hi) = match idx.as_slice() {
                    [] => (0, st.len()),
                    [lo] => (*lo, st.len()),
                    [lo, hi] => (*lo, *hi),
                    _ => return err("too many slice indexes"),
                };
                if lo > hi || hi > st.len() || !st.is_char_boundary(lo) || !st.is_char_boundary(hi)
                {
                    return err(format!("slice index out of range: {lo}:{hi}"));
                }
                V::Str(st[lo..hi].to_owned())
            }
            "print" => V::Str(sprint(&args)),
            "println" => V::Str(args.iter().map(V::print).collect::<Vec<_>>().join(" ") + "\n"),
            "printf" => {
                let Some(V::Str(f)) = args.first() else {
                    return err("printf needs a format string");
                };
                V::Str(sprintf(f, &args[1..])?)
            }
            "html" => V::Str(html_escape(&sprint(&args))),
            "js" => V::Str(js_escape(&sprint(&args))),
            "urlquery" => V::Str(url_escape(&sprint(&args))),
            "call" => return err("call is not supported in transform templates"),
            other => return err(format!("function {other:?} not defined")),
        })
    }
}

fn type_name(v: &V) -> &'static str {
    match v {
        V::Nil => "nil",
        V::Bool(_) => "bool",
        V::Int(_) => "int",
        V::Float(_) => "float64",
        V::Str(_) => "string",
        V::Map(_) => "map[string]string",
        V::Ctx => "transform.TemplateContext",
    }
}

fn compare(a: &V, b: &V) -> Result<std::cmp::Ordering, TemplateError> {
    use std::cmp::Ordering;
    Ok(match (a, b) {
        (V::Int(x), V::Int(y)) => x.cmp(y),
        (V::Float(x), V::Float(y)) => x.partial_cmp(y).unwrap_or(Ordering::Equal),
        (V::Int(x), V::Float(y)) => (*x as f64).partial_cmp(y).unwrap_or(Ordering::Equal),
        (V::Float(x), V::Int(y)) => x.partial_cmp(&(*y as f64)).unwrap_or(Ordering::Equal),
        (V::Str(x), V::Str(y)) => x.cmp(y),
        (V::Bool(x), V::Bool(y)) => x.cmp(y),
        (V::Nil, V::Nil) => Ordering::Equal,
        (x, y) => {
            return err(format!(
                "incompatible types for comparison: {} and {}",
                type_name(x),
                type_name(y)
            ));
        }
    })
}

/// Go's `strings.Replace(s, old, new, -1)` (an empty `old` inserts `new` around every rune).
fn go_replace_all(s: &str, old: &str, new: &str) -> String {
    if old.is_empty() {
        let mut out = String::from(new);
        for c in s.chars() {
            out.push(c);
            out.push_str(new);
        }
        return out;
    }
    s.replace(old, new)
}

/// `fmt.Sprint`: spaces between operands when neither is a string.
fn sprint(args: &[V]) -> String {
    let mut out = String::new();
    for (i, a) in args.iter().enumerate() {
        if i > 0 && !a.is_string() && !args[i - 1].is_string() {
            out.push(' ');
        }
        out.push_str(&a.print());
    }
    out
}

fn go_quote(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Go's `fmt.Sprintf` for `%s %q %v %d %x %X %%` with flags `-`, `0`, `+`, width and precision.
fn sprintf(f: &str, args: &[V]) -> Result<String, TemplateError> {
    let c: Vec<char> = f.chars().collect();
    let mut out = String::new();
    let mut i = 0;
    let mut argi = 0;
    while i < c.len() {
        if c[i] != '%' {
            out.push(c[i]);
            i += 1;
            continue;
        }
        i += 1;
        let (mut minus, mut zero, mut plus) = (false, false, false);
        while i < c.len() && matches!(c[i], '-' | '0' | '+' | ' ' | '#') {
            match c[i] {
                '-' => minus = true,
                '0' => zero = true,
                '+' => plus = true,
                _ => {}
            }
            i += 1;
        }
        let mut width = 0usize;
        while i < c.len() && c[i].is_ascii_digit() {
            width = width
                .saturating_mul(10)
                .saturating_add(c[i] as usize - '0' as usize);
            i += 1;
        }
        let mut precision: Option<usize> = None;
        if i < c.len() && c[i] == '.' {
            i += 1;
            let mut p = 0usize;
            while i < c.len() && c[i].is_ascii_digit() {
                p = p
                    .saturating_mul(10)
                    .saturating_add(c[i] as usize - '0' as usize);
                i += 1;
            }
            precision = Some(p);
        }
        if width > MAX_OUTPUT || precision.is_some_and(|p| p > MAX_OUTPUT) {
            return err(format!("template output exceeds {MAX_OUTPUT} bytes"));
        }
        let Some(&verb) = c.get(i) else {
            out.push_str("%!(NOVERB)");
            break;
        };
        i += 1;
        if verb == '%' {
            out.push('%');
            continue;
        }
        let Some(arg) = args.get(argi) else {
            out.push_str(&format!("%!{verb}(MISSING)"));
            continue;
        };
        argi += 1;
        let body = match (verb, arg) {
            ('d', V::Int(n)) => {
                let digits = n.unsigned_abs().to_string();
                let sign = if *n < 0 {
                    "-"
                } else if plus {
                    "+"
                } else {
                    ""
                };
                if zero && !minus && width > sign.len() + digits.len() {
                    format!(
                        "{sign}{}{digits}",
                        "0".repeat(width - sign.len() - digits.len())
                    )
                } else {
                    format!("{sign}{digits}")
                }
            }
            ('x', V::Int(n)) => format!("{n:x}"),
            ('X', V::Int(n)) => format!("{n:X}"),
            ('x', V::Str(s)) => s.bytes().map(|b| format!("{b:02x}")).collect(),
            ('X', V::Str(s)) => s.bytes().map(|b| format!("{b:02X}")).collect(),
            ('s' | 'v', v) => {
                let mut s = v.print();
                if let Some(p) = precision {
                    s = s.chars().take(p).collect();
                }
                s
            }
            ('q', V::Str(s)) => go_quote(s),
            (other, _) => format!("%!{other}({}={})", type_name(arg), arg.print()),
        };
        let len = body.chars().count();
        if width > len {
            let pad = " ".repeat(width - len);
            if minus {
                out.push_str(&body);
                out.push_str(&pad);
            } else if zero && !matches!(verb, 'd') {
                out.push_str(&"0".repeat(width - len));
                out.push_str(&body);
            } else {
                out.push_str(&pad);
                out.push_str(&body);
            }
        } else {
            out.push_str(&body);
        }
        if out.len() > MAX_OUTPUT {
            return err(format!("template output exceeds {MAX_OUTPUT} bytes"));
        }
    }
    if argi < args.len() {
        let extra: Vec<String> = args[argi..]
            .iter()
            .map(|a| format!("{}={}", type_name(a), a.print()))
            .collect();
        out.push_str(&format!("%!(EXTRA {})", extra.join(", ")));
    }
    Ok(out)
}

fn html_escape(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '\'' => out.push_str("&#39;"),
            '"' => out.push_str("&#34;"),
            '\0' => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

fn js_escape(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("\\'"),
            '"' => out.push_str("\\\""),
            '<' => out.push_str("\\u003C"),
            '>' => out.push_str("\\u003E"),
            '&' => out.push_str("\\u0026"),
            '=' => out.push_str("\\u003D"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

fn url_escape(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            b => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(target: &str) -> Context {
        Context {
            target_namespace: target.into(),
            source_namespace: "default".into(),
            source_name: "TEST-CONFIG".into(),
            target_name: "TEST-CONFIG".into(),
            labels: [
                ("app".to_owned(), "myapp".to_owned()),
                ("app.kubernetes.io/name".to_owned(), "web".to_owned()),
            ]
            .into(),
            annotations: BTreeMap::new(),
        }
    }

    fn r(src: &str, target: &str) -> Result<String, TemplateError> {
        render(src, &ctx(target))
    }

    #[test]
    fn kubemirrors_examples_render_identically() {
        assert_eq!(
            r("https://{{.TargetNamespace}}.api.example.com", "prod-app").unwrap(),
            "https://prod-app.api.example.com"
        );
        assert_eq!(
            r("{{upper .TargetNamespace}}", "prod-app").unwrap(),
            "PROD-APP"
        );
        assert_eq!(r("{{lower .SourceName}}", "x").unwrap(), "test-config");
        assert_eq!(
            r("{{.TargetNamespace}}-value", "production").unwrap(),
            "production-value"
        );
        assert_eq!(r("{{.TargetNamespace}}-empty", "").unwrap(), "-empty");
        assert_eq!(
            r(
                r#"app_{{replace .TargetNamespace "-" "_"}}"#,
                "kubemirror-e2e-app-1"
            )
            .unwrap(),
            "app_kubemirror_e2e_app_1"
        );
        assert_eq!(
            r(
                r#"{{upper (replace .TargetNamespace "-" "_")}}"#,
                "namespace-3"
            )
            .unwrap(),
            "NAMESPACE_3"
        );
        assert_eq!(
            r(r#"{{replace .TargetNamespace "-" ":"}}:"#, "namespace-2").unwrap(),
            "namespace:2:"
        );
        assert_eq!(
            r(
                r#"{{trimPrefix .TargetNamespace "namespace-"}}"#,
                "namespace-2"
            )
            .unwrap(),
            "2"
        );
        assert_eq!(
            r(r#"{{ .TargetNamespace | trimPrefix "app-" }}"#, "app-web").unwrap(),
            "app-",
            "the piped value is the last argument"
        );
        assert_eq!(
            r(
                r#"{{upper .TargetNamespace}}:cache"#,
                "kubemirror-e2e-app-1"
            )
            .unwrap(),
            "KUBEMIRROR-E2E-APP-1:cache"
        );
    }

    #[test]
    fn fields_missing_keys_and_unknown_fields() {
        assert!(
            r(r#"{{default "fallback-value" .OptionalField}}"#, "x")
                .unwrap_err()
                .0
                .contains("can't evaluate field OptionalField")
        );
        assert_eq!(r("{{.Labels.missing}}", "x").unwrap(), "<no value>");
        assert_eq!(r(r#"{{default "x" .Labels.missing}}"#, "x").unwrap(), "x");
        assert_eq!(
            r(r#"{{index .Labels "app.kubernetes.io/name"}}"#, "x").unwrap(),
            "web"
        );
        assert_eq!(r("{{.Labels.app}}", "x").unwrap(), "myapp");
    }

    #[test]
    fn control_flow_variables_and_trimming() {
        let t = r#"{{- if hasPrefix .TargetNamespace "prod-" -}} production {{- else if eq .TargetNamespace "staging" "qa" -}} pre {{- else -}} dev {{- end -}}"#;
        assert_eq!(r(t, "prod-a").unwrap(), "production");
        assert_eq!(r(t, "qa").unwrap(), "pre");
        assert_eq!(r(t, "x").unwrap(), "dev");
        assert_eq!(
            r("{{$n := .TargetNamespace}}{{$n}}/{{$n}}", "a").unwrap(),
            "a/a"
        );
        assert_eq!(
            r("{{range $k, $v := .Labels}}{{$k}}={{$v}};{{end}}", "a").unwrap(),
            "app=myapp;app.kubernetes.io/name=web;"
        );
        assert_eq!(
            r("{{with .Labels.app}}[{{.}}]{{end}}", "a").unwrap(),
            "[myapp]"
        );
        assert_eq!(
            r("{{with .Labels.none}}[{{.}}]{{else}}none{{end}}", "a").unwrap(),
            "none"
        );
        assert_eq!(r("a {{/* a comment */}} b", "x").unwrap(), "a  b");
        assert_eq!(r("{{ `raw \\n` }}", "x").unwrap(), "raw \\n");
        assert_eq!(
            r(
                "{{len .TargetNamespace}} {{ and 1 0 }} {{or 0 \"\" 3}} {{not true}}",
                "abc"
            )
            .unwrap(),
            "3 0 3 false"
        );
        assert_eq!(
            r(r#"{{slice .TargetNamespace 1 3}}"#, "abcd").unwrap(),
            "bc"
        );
        assert_eq!(
            r(r#"{{lt 1 2}} {{ge "b" "a"}} {{ne 1 2}}"#, "x").unwrap(),
            "true true true"
        );
    }

    #[test]
    fn printing_functions() {
        assert_eq!(
            r(r#"{{printf "%s-%d-%q-%x-%%" "a" 42 "b" 255}}"#, "x").unwrap(),
            "a-42-\"b\"-ff-%"
        );
        assert_eq!(
            r(r#"{{printf "%05d|%-4s|%4s|%.2s" 42 "a" "b" "xyz"}}"#, "x").unwrap(),
            "00042|a   |   b|xy"
        );
        assert_eq!(
            r(r#"{{printf "%v %v" .Labels.none true}}"#, "x").unwrap(),
            "<no value> true"
        );
        assert_eq!(r(r#"{{print 1 2 "a" 3}}"#, "x").unwrap(), "1 2a3");
        assert_eq!(r(r#"{{println "a" 1}}"#, "x").unwrap(), "a 1\n");
        assert_eq!(
            r(r#"{{html "<a href='x'>"}}"#, "x").unwrap(),
            "&lt;a href=&#39;x&#39;&gt;"
        );
        assert_eq!(r(r#"{{urlquery "a b&c"}}"#, "x").unwrap(), "a+b%26c");
        assert_eq!(r(r#"{{js "it's"}}"#, "x").unwrap(), "it\\'s");
    }

    #[test]
    fn errors_and_limits() {
        for bad in [
            "{{define \"x\"}}{{end}}",
            "{{template \"x\"}}",
            "{{block \"x\" .}}{{end}}",
            "{{call .X}}",
            "{{if}}",
            "{{if true}}no end",
            "{{end}}",
            "{{nosuchfunc 1}}",
            "{{ \"unterminated }}",
            "{{upper 1}}",
            "{{lt 1 \"a\"}}",
        ] {
            assert!(r(bad, "x").is_err(), "{bad:?}");
        }
        // Each limit on its own: the output limit with time to spare however loaded the
        // machine is, and an expired deadline (the check runs before any work).
        let run = |src: &str, deadline: Instant| {
            Template::parse(src)
                .unwrap()
                .execute_by(&ctx("x"), deadline)
                .unwrap_err()
                .0
        };
        let ample = Instant::now() + Duration::from_secs(3600);
        let e = run(r#"{{printf "%0900000d" 1}}"#, ample);
        assert!(e.contains("exceeds"), "{e}");
        let e = run("{{range $i := 100000}}xxxxxxxxxx{{end}}", ample);
        assert!(e.contains("exceeds"), "{e}");
        let past = Instant::now()
            .checked_sub(Duration::from_secs(1))
            .expect("a monotonic clock past one second");
        let e = run("{{range $i := 100000}}{{end}}", past);
        assert!(e.contains("timeout"), "{e}");
    }
}
