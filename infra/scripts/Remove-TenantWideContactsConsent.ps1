<#
.SYNOPSIS
    Removes the tenant-wide Microsoft Graph Contacts.* application consent of the contact-sync app.

.DESCRIPTION
    Exchange Online RBAC for Applications and Entra ID application permissions are a UNION: as long as the app keeps
    the admin-consented Graph application permission Contacts.ReadWrite (or Contacts.Read), it can reach EVERY mailbox
    and the management scope of Set-ExchangeRbacScope.ps1 restricts nothing (graph.md §6.2).
    This script deletes those app role assignments from the app's service principal. Other permissions (for example
    GroupMember.Read.All, needed only with SYNC_MAILBOX_GROUP_ID) are kept.

    Run it AFTER Set-ExchangeRbacScope.ps1 succeeded. Supports -WhatIf.
    Needs the Microsoft.Graph.Applications module and a Privileged Role Administrator / Cloud Application
    Administrator (scopes Application.Read.All, AppRoleAssignment.ReadWrite.All).
    Also remove Contacts.ReadWrite from "API permissions" of the app registration, so that nobody re-consents it.

.EXAMPLE
    ./Remove-TenantWideContactsConsent.ps1 -AppId 00000000-0000-0000-0000-000000000000 -WhatIf
#>
[CmdletBinding(SupportsShouldProcess = $true)]
param(
    [Parameter(Mandatory = $true)] [guid] $AppId,
    [string[]] $Permissions = @('Contacts.ReadWrite', 'Contacts.Read')
)
Set-StrictMode -Version Latest
$ErrorActionPreference = 'Stop'

Import-Module Microsoft.Graph.Applications
if (-not (Get-MgContext)) {
    Connect-MgGraph -Scopes 'Application.Read.All', 'AppRoleAssignment.ReadWrite.All' -NoWelcome
}

$graphAppId = '00000003-0000-0000-c000-000000000000'   # Microsoft Graph
$graph = Get-MgServicePrincipal -Filter "appId eq '$graphAppId'"
$app = Get-MgServicePrincipal -Filter "appId eq '$AppId'"
if (-not $app) { throw "No service principal (enterprise application) with appId $AppId in this tenant." }

# look the role ids up by name instead of hard-coding them
$roleIds = @{}
foreach ($role in $graph.AppRoles) {
    if ($Permissions -contains $role.Value) { $roleIds[$role.Id] = $role.Value }
}

$assignments = @(Get-MgServicePrincipalAppRoleAssignment -ServicePrincipalId $app.Id -All |
    Where-Object { $_.ResourceId -eq $graph.Id -and $roleIds.ContainsKey($_.AppRoleId) })
if ($assignments.Count -eq 0) {
    Write-Host "No tenant-wide $($Permissions -join '/') consent on $($app.DisplayName): the Exchange scope is effective."
    return
}
foreach ($a in $assignments) {
    $name = $roleIds[$a.AppRoleId]
    if ($PSCmdlet.ShouldProcess("$($app.DisplayName)", "remove Microsoft Graph application permission $name")) {
        Remove-MgServicePrincipalAppRoleAssignment -ServicePrincipalId $app.Id -AppRoleAssignmentId $a.Id
        Write-Host "Removed $name (tenant-wide) from $($app.DisplayName)."
    }
}
Write-Host 'Tokens issued before now keep the old roles until they expire (about 1 hour).'
