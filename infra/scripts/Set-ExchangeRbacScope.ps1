<#
.SYNOPSIS
    Limits the contact-sync Entra app to the sales mailboxes with Exchange Online RBAC for Applications.

.DESCRIPTION
    Idempotent. Creates (or updates) in Exchange Online:
      1. the service principal pointer to the Entra enterprise application (New-ServicePrincipal),
      2. a management scope: the direct members of a group (MemberOfGroup) or any recipient filter,
         e.g. "Department -eq 'Sales'",
      3. the role assignment "Application Contacts.ReadWrite" limited to that scope,
    then checks with Test-ServicePrincipalAuthorization (bypasses the 30 min - 2 h permission cache) that an in-scope
    mailbox is allowed and an out-of-scope mailbox is refused. Throws when either check fails.

    The scope is only real once the tenant-wide Contacts.ReadWrite consent of the app is removed
    (Remove-TenantWideContactsConsent.ps1): Entra and Exchange grants are a union (graph.md §6.2).

    Needs the ExchangeOnlineManagement module and the Exchange Administrator role (or Organization Management).
    Use the ids of the ENTERPRISE APPLICATION (service principal), not of the app registration object:
        az ad sp show --id <GRAPH_CLIENT_ID> --query "{appId:appId, objectId:id}"

.EXAMPLE
    ./Set-ExchangeRbacScope.ps1 -AppId 00000000-0000-0000-0000-000000000000 `
        -ServicePrincipalObjectId 11111111-1111-1111-1111-111111111111 `
        -GroupIdentity sales-contact-sync@contoso.com `
        -InScopeMailbox adele@contoso.com -OutOfScopeMailbox ceo@contoso.com

.EXAMPLE
    ./Set-ExchangeRbacScope.ps1 -AppId <appId> -ServicePrincipalObjectId <objectId> `
        -RecipientFilter "Department -eq 'Sales'" -InScopeMailbox adele@contoso.com -OutOfScopeMailbox ceo@contoso.com
#>
[CmdletBinding(SupportsShouldProcess = $true, DefaultParameterSetName = 'Group')]
param(
    [Parameter(Mandatory = $true)] [guid] $AppId,
    [Parameter(Mandatory = $true)] [guid] $ServicePrincipalObjectId,
    [string] $DisplayName = 'M365 Salesforce contact sync',
    [string] $ScopeName = 'Contact sync mailboxes',
    # Mail-enabled group whose DIRECT members are in scope (nested members are not, graph.md §6.2).
    [Parameter(Mandatory = $true, ParameterSetName = 'Group')] [string] $GroupIdentity,
    # Any filterable recipient property, e.g. "Department -eq 'Sales'" or "CustomAttribute1 -eq 'contactsync'".
    [Parameter(Mandatory = $true, ParameterSetName = 'Filter')] [string] $RecipientFilter,
    [string] $Role = 'Application Contacts.ReadWrite',
    [Parameter(Mandatory = $true)] [string] $InScopeMailbox,
    [Parameter(Mandatory = $true)] [string] $OutOfScopeMailbox
)
Set-StrictMode -Version Latest
$ErrorActionPreference = 'Stop'

if (-not (Get-Command Get-ServicePrincipal -ErrorAction SilentlyContinue)) {
    Import-Module ExchangeOnlineManagement
    Connect-ExchangeOnline -ShowBanner:$false
}

# 1. Exchange pointer to the Entra service principal
$sp = Get-ServicePrincipal -Identity "$ServicePrincipalObjectId" -ErrorAction SilentlyContinue
if (-not $sp) {
    if ($PSCmdlet.ShouldProcess($DisplayName, 'New-ServicePrincipal')) {
        $sp = New-ServicePrincipal -AppId "$AppId" -ObjectId "$ServicePrincipalObjectId" -DisplayName $DisplayName
    }
} else {
    Write-Host "Service principal pointer exists: $($sp.DisplayName)"
}

# 2. Management scope
if ($PSCmdlet.ParameterSetName -eq 'Group') {
    $dn = (Get-Group -Identity $GroupIdentity).DistinguishedName
    $filter = "MemberOfGroup -eq '$dn'"
} else {
    $filter = $RecipientFilter
}
$scope = Get-ManagementScope -Identity $ScopeName -ErrorAction SilentlyContinue
if (-not $scope) {
    if ($PSCmdlet.ShouldProcess($ScopeName, "New-ManagementScope ($filter)")) {
        New-ManagementScope -Name $ScopeName -RecipientRestrictionFilter $filter | Out-Null
    }
} elseif ($scope.RecipientFilter -ne $filter) {
    if ($PSCmdlet.ShouldProcess($ScopeName, "Set-ManagementScope ($filter)")) {
        Set-ManagementScope -Identity $ScopeName -RecipientRestrictionFilter $filter
    }
}

# 3. Role assignment limited to the scope
$existing = Get-ManagementRoleAssignment -RoleAssignee "$ServicePrincipalObjectId" -Role $Role -ErrorAction SilentlyContinue |
    Where-Object { $_.CustomResourceScope -eq $ScopeName }
if (-not $existing) {
    if ($PSCmdlet.ShouldProcess($Role, "New-ManagementRoleAssignment (scope '$ScopeName')")) {
        New-ManagementRoleAssignment -App "$ServicePrincipalObjectId" -Role $Role -CustomResourceScope $ScopeName | Out-Null
    }
} else {
    Write-Host "Role assignment exists: $Role on '$ScopeName'"
}

if ($WhatIfPreference) { return }

# 4. Verify: one mailbox in scope, one refused
function Test-InScope([string] $Mailbox) {
    $rows = @(Test-ServicePrincipalAuthorization -Identity "$ServicePrincipalObjectId" -Resource $Mailbox |
        Where-Object { $_.RoleName -eq $Role })
    return ($rows.Count -gt 0) -and [bool]($rows | Where-Object { $_.InScope })
}
$inOk = Test-InScope $InScopeMailbox
$outAllowed = Test-InScope $OutOfScopeMailbox
Write-Host ("{0,-40} InScope={1}" -f $InScopeMailbox, $inOk)
Write-Host ("{0,-40} InScope={1}" -f $OutOfScopeMailbox, $outAllowed)
if (-not $inOk) { throw "$InScopeMailbox is not in scope of '$ScopeName': check the group membership or the filter." }
if ($outAllowed) { throw "$OutOfScopeMailbox is in scope: the filter is too wide." }
Write-Host 'Exchange RBAC scope verified. Now remove the tenant-wide consent: ./Remove-TenantWideContactsConsent.ps1'
Write-Host 'Graph may keep the old permissions cached for 30 minutes to 2 hours.'
