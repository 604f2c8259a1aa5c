-- One self-contained script per kind, as argocd-cm holds them (a check loads no module):
-- the small helpers below (field, text, condition) repeat in each on purpose.
-- Argo CD health of a kopfvirt.io VirtualMachine, from the status the controller and the
-- node agents write (docs/gitops.md has the table). Lua 5.1 with Argo CD's default
-- libraries only (base and table: no string or math), and no error on any input: a
-- missing or odd field is judged, never indexed blindly.

local function field(t, key)
  if type(t) == "table" then
    return t[key]
  end
  return nil
end

local function text(v) -- a string, or "" for anything else
  if type(v) == "string" then
    return v
  end
  return ""
end

local function show(v) -- a value for a message
  if type(v) == "string" or type(v) == "number" or type(v) == "boolean" then
    return tostring(v)
  end
  return "(" .. type(v) .. ")"
end

local function condition(status, kind)
  local conditions = field(status, "conditions")
  if type(conditions) ~= "table" then
    return nil
  end
  for _, c in ipairs(conditions) do
    if type(c) == "table" and c.type == kind then
      return c
    end
  end
  return nil
end

local function isTrue(c)
  return field(c, "status") == "True"
end

-- "Reason: message" of a condition (what went wrong, for Degraded).
local function why(c, fallback)
  local reason, message = text(field(c, "reason")), text(field(c, "message"))
  if reason ~= "" and message ~= "" then
    return reason .. ": " .. message
  end
  if message ~= "" then
    return message
  end
  if reason ~= "" then
    return reason
  end
  return fallback
end

-- "Phase: detail" (what is going on, for the other states).
local function say(phase, detail)
  if detail ~= nil and detail ~= "" then
    return phase .. ": " .. detail
  end
  return phase
end

local generation = field(field(obj, "metadata"), "generation")

-- A condition written for an older spec says nothing about this one.
local function current(c)
  local seen = field(c, "observedGeneration")
  return type(seen) ~= "number" or type(generation) ~= "number" or seen >= generation
end

-- ISO timestamps compare as strings, as the operator compares them (core/lifecycle.py).
local function later(a, b)
  return text(a) > text(b)
end

local annotations = field(field(obj, "metadata"), "annotations")
local START = "kopfvirt.io/start-requested-at"
local STOP = "kopfvirt.io/stop-requested-at"
local RESTART = "kopfvirt.io/restart-requested-at"

-- Should the VM run now? core/lifecycle.py's wants_running; nil for an unknown strategy.
local function wantsRunning(strategy, status)
  local startAt, stopAt = field(annotations, START), field(annotations, STOP)
  local stopReason = field(status, "stopReason")
  local startedSinceStop = later(startAt, field(status, "stopTime"))
  if strategy == "Halted" then
    return false
  elseif strategy == "Always" then
    return true
  elseif strategy == "RerunOnFailure" then
    return stopReason ~= "GuestShutdown" or startedSinceStop
  elseif strategy == "Once" then
    return stopReason == nil or startedSinceStop
  elseif strategy == "Manual" then
    return later(startAt, stopAt) and (stopReason == nil or startedSinceStop)
  end
  return nil
end

local hs = {}
local status = field(obj, "status")
if type(status) ~= "table" then
  hs.status = "Progressing"
  hs.message = "waiting for the controller to report status"
  return hs
end

-- It cannot get on without a change of its spec.
local stalled = condition(status, "Stalled")
if isTrue(stalled) and current(stalled) then
  hs.status = "Degraded"
  hs.message = why(stalled, "stalled")
  return hs
end

local observed = field(status, "observedGeneration")
if type(generation) == "number" and type(observed) == "number" and observed < generation then
  hs.status = "Progressing"
  hs.message = "waiting for the spec to be observed (generation " .. show(generation) .. ", observed "
    .. show(observed) .. ")"
  return hs
end

-- A second copy of its domain runs where the cluster does not place it: someone must act.
local stray = condition(status, "StrayDomain")
if isTrue(stray) then
  hs.status = "Degraded"
  hs.message = why(stray, "a stray copy of the domain runs")
  return hs
end

local spec = field(obj, "spec")
local strategy = field(spec, "runStrategy")
if strategy == nil then
  strategy = "Always" -- the CRD's default
end
local phase = field(status, "phase")
local ready = condition(status, "Ready")
local active = { Starting = true, Running = true, Paused = true, Stopping = true, Migrating = true }

if phase == nil then
  hs.status = "Progressing"
  hs.message = say("waiting for a phase", text(field(ready, "message")))
  return hs
end

-- The node does not report, or its libvirtd does not answer: the guest may or may not
-- run, and nothing acts on it until someone does (docs/architecture.md, node loss).
if active[phase] and field(ready, "status") == "Unknown" then
  hs.status = "Degraded"
  hs.message = why(ready, "the VM's node does not report")
  return hs
end

if phase == "Running" or phase == "Paused" then
  if wantsRunning(strategy, status) == false then
    hs.status = "Progressing"
    hs.message = say(phase, "stopping (runStrategy " .. show(strategy) .. ")")
  elseif later(field(annotations, RESTART), field(status, "startTime")) then
    hs.status = "Progressing"
    hs.message = say(phase, "restart requested")
  elseif phase == "Paused" then
    hs.status = "Suspended"
    hs.message = say(phase, text(field(condition(status, "Paused"), "message")))
  elseif ready == nil then
    hs.status = "Progressing"
    hs.message = say(phase, "waiting for the Ready condition")
  elseif isTrue(ready) then
    hs.status = "Healthy"
    hs.message = say(phase, text(field(ready, "message")))
  else
    hs.status = "Degraded"
    hs.message = why(ready, "not ready")
  end
  return hs
end

if phase == "Stopped" then
  -- Stopped as its spec asks, the VM carries no Ready (docs/architecture.md, Conditions).
  local stopReason = field(status, "stopReason")
  local parts = {}
  if stopReason ~= nil then
    table.insert(parts, "stopReason " .. show(stopReason))
  end
  local wants = wantsRunning(strategy, status)
  if wants == true then
    table.insert(parts, "runStrategy " .. show(strategy) .. " starts it again")
    hs.status = "Progressing"
  elseif stopReason == "GuestCrashed" or stopReason == "NodeLost" then
    -- It did not stop because anyone asked, and its runStrategy does not start it again.
    table.insert(parts, "runStrategy " .. show(strategy) .. " does not start it again")
    if field(ready, "status") == "False" and text(field(ready, "message")) ~= "" then
      table.insert(parts, ready.message)
    end
    hs.status = "Degraded"
  else
    table.insert(parts, "runStrategy " .. show(strategy))
    hs.status = "Suspended"
  end
  hs.message = say(phase, table.concat(parts, "; "))
  return hs
end

if phase == "Failed" then
  hs.status = "Degraded"
  hs.message = why(ready, "failed")
  return hs
end

if phase == "Migrating" then
  local migration = field(status, "migration")
  local detail = ""
  if type(field(migration, "targetNode")) == "string" then
    detail = "to " .. migration.targetNode
    if type(migration.name) == "string" then
      detail = detail .. " (Migration " .. migration.name .. ")"
    end
  end
  hs.status = "Progressing"
  hs.message = say(phase, detail)
  return hs
end

if phase == "Pending" or phase == "Scheduling" or phase == "Stopping" then
  hs.status = "Progressing"
  hs.message = say(phase, text(field(ready, "message")))
  return hs
end

if phase == "Starting" then
  local reconciling = condition(status, "Reconciling")
  hs.status = "Progressing"
  hs.message = say(phase, text(field(reconciling, "message")))
  return hs
end

hs.status = "Unknown"
hs.message = "unknown phase " .. show(phase)
return hs
