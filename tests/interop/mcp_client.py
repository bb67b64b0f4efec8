#!/usr/bin/env python3
"""Drives `mmogit mcp` with the official MCP Python SDK (an independent client).

Usage: mcp_client.py <mmogit binary> <home>

Lists the tools, remembers, recalls (filters and full-text query), sends bad
arguments (each must come back as a tool error while the server lives on),
and prints a JSON summary on stdout. Exits non-zero on the first mismatch.
"""
import asyncio
import json
import sys

from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client


def check(cond, what):
    if not cond:
        print(f"FAILED: {what}", file=sys.stderr)
        sys.exit(1)


def text_of(result):
    return "".join(getattr(c, "text", "") for c in result.content)


async def main(binary, home):
    params = StdioServerParameters(
        command=binary,
        args=["--home", home, "mcp"],
        env={"MMOGIT_NO_MDNS": "1", "NO_COLOR": "1", "PATH": "/usr/bin:/bin"},
    )
    summary = {}
    async with stdio_client(params) as (read, write):
        async with ClientSession(read, write) as session:
            init = await session.initialize()
            summary["server"] = init.serverInfo.name
            summary["protocol"] = init.protocolVersion

            tools = (await session.list_tools()).tools
            names = sorted(t.name for t in tools)
            summary["tools"] = names
            check(names == ["peers", "recall", "remember", "status", "sync"], f"tools: {names}")
            for t in tools:
                check(t.inputSchema.get("type") == "object", f"{t.name} schema: {t.inputSchema}")
                check(t.description, f"{t.name} has no description")
            remember = next(t for t in tools if t.name == "remember")
            check(remember.inputSchema.get("required") == ["content"], "remember requires content")

            r = await session.call_tool(
                "remember",
                {"content": "MCP clients can remember through mmogit", "type": "learning",
                 "tags": ["mcp", "interop"], "confidence": 0.9},
            )
            check(not r.isError, f"remember failed: {text_of(r)}")
            mem = r.structuredContent["memory"]
            check(len(mem["id"]) == 64 and mem["verified"] is True, f"remember: {mem}")
            summary["remembered"] = mem["id"]

            r = await session.call_tool("recall", {"tags": ["mcp"]})
            check(not r.isError, f"recall failed: {text_of(r)}")
            got = r.structuredContent["memories"]
            check([m["id"] for m in got] == [mem["id"]], f"recall by tag: {got}")
            check(got[0]["author"] == mem["author"] and got[0]["verified"] is True, f"{got[0]}")
            check(got[0]["content"] == "MCP clients can remember through mmogit", f"{got[0]}")
            # The text content carries the same JSON for clients without structured output.
            check(json.loads(text_of(r))["memories"][0]["id"] == mem["id"], "text content")

            r = await session.call_tool("recall", {"query": "remember mmogit", "limit": 5})
            check(not r.isError, f"recall query failed: {text_of(r)}")
            hits = r.structuredContent["memories"]
            check(len(hits) == 1 and hits[0]["id"] == mem["id"] and "score" in hits[0], f"{hits}")
            summary["query_hits"] = len(hits)

            bad = [
                ("recall", {"limit": "many"}),
                ("recall", {"types": ["dream"]}),
                ("recall", {"since": "last tuesday-ish"}),
                ("recall", {"authors": ["zz"]}),
                ("recall", {"query": "\"unterminated"}),
                ("recall", {"colour": "blue"}),
                ("remember", {}),
                ("remember", {"content": "x", "confidence": 7}),
                ("remember", {"content": ""}),
                ("peers", {"action": "explode"}),
                ("peers", {"action": "accept", "peer": "nobody-known"}),
                ("sync", {"timeout_secs": -1}),
            ]
            errors = []
            for tool, args in bad:
                r = await session.call_tool(tool, args)
                check(r.isError, f"{tool} {args} should be a tool error: {text_of(r)}")
                check(text_of(r).startswith("error: "), f"{tool} {args}: {text_of(r)}")
                errors.append(text_of(r))
            summary["tool_errors"] = errors
            # Trust changes are off without `mmogit mcp --allow-trust-changes`.
            check("--allow-trust-changes" in errors[10], f"accept: {errors[10]}")
            peers_tool = next(t for t in tools if t.name == "peers")
            actions = peers_tool.inputSchema["properties"]["action"]["enum"]
            check(actions == ["list", "pending"], f"peers actions: {actions}")

            r = await session.call_tool("peers", {"action": "list"})
            check(not r.isError and r.structuredContent["peers"] == [], f"peers: {text_of(r)}")
            r = await session.call_tool("sync", {})
            check(not r.isError and r.structuredContent["peers"] == [], f"sync: {text_of(r)}")
            # Still alive after all that.
            r = await session.call_tool("status", {})
            check(not r.isError, f"status: {text_of(r)}")
            st = r.structuredContent
            check(st["pubkey"] == mem["author"] and st["memories"] == 1, f"status: {st}")
            summary["status"] = st
    print(json.dumps(summary))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
