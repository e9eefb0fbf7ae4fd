<#
.SYNOPSIS
    Generates the HMAC secret of the signed POST /api/salesforce/events relay and stores it in Key Vault.

.DESCRIPTION
    Writes 32 random bytes (base64) as the secret events-hmac-secret, content type text/plain. The value is passed to
    the Azure CLI through a temporary file (not on the command line) and is never printed. The Function App reads it
    through EVENTS_HMAC_SECRET = @Microsoft.KeyVault(SecretUri=.../secrets/events-hmac-secret/), written by the
    deployment when enableEventsRelay is true. Configure the same value in the relay from Key Vault:
        az keyvault secret show --vault-name <vault> --name events-hmac-secret --query value -o tsv
    Only needed when Salesforce events are pushed by a relay instead of pulled over the Pub/Sub API.
    Needs Key Vault Secrets Officer on the vault. Running it again rotates the secret: update the relay too.

.EXAMPLE
    ./Set-EventsHmacSecret.ps1 -VaultName kv-abc123def456x
#>
[CmdletBinding(SupportsShouldProcess = $true)]
param(
    [Parameter(Mandatory = $true)] [string] $VaultName,
    [string] $Name = 'events-hmac-secret'
)
Set-StrictMode -Version Latest
$ErrorActionPreference = 'Stop'

$bytes = New-Object byte[] 32
[System.Security.Cryptography.RandomNumberGenerator]::Create().GetBytes($bytes)
$value = [Convert]::ToBase64String($bytes)
$file = New-TemporaryFile
try {
    Set-Content -Path $file -Value $value -NoNewline -Encoding ascii
    if ($PSCmdlet.ShouldProcess("$VaultName/$Name", 'set secret')) {
        az keyvault secret set --vault-name $VaultName --name $Name --file $file --encoding utf-8 `
            --content-type 'text/plain' --output none
        if ($LASTEXITCODE -ne 0) { throw 'az keyvault secret set failed' }
        Write-Host "Stored a new $Name in $VaultName."
    }
} finally {
    Remove-Item $file -ErrorAction SilentlyContinue
}
